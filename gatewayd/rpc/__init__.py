"""Protocol-neutral RPC: status codes, errors, the call object, framing, codecs, the method table."""
