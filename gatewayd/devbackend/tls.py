"""TLS for the reference backend's listeners (``twist gatewayd-devbackend --tls-certificate ...``).

Both ports speak TLS offering ALPN ``h2`` and ``http/1.1``: the push port is the gateway's own
HTTP/2 server, where ALPN alone picks HTTP/2 under TLS (gRPC clients need ``h2``); the REST port
is twisted.web. With a client CA, every connection must present a certificate that CA signed
(mTLS): a client without one fails the handshake.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import ssl
from twisted.protocols.tls import TLSMemoryBIOFactory


def server_tls_options(certificate: str, private_key: str, client_ca: str = "") -> ssl.CertificateOptions:
    """The listeners' TLS settings from PEM files (``ValueError`` naming the file that cannot be used)."""
    try:
        own = ssl.PrivateCertificate.loadPEM(Path(certificate).read_bytes() + b"\n" + Path(private_key).read_bytes())
    except Exception as e:  # OSError, and pyOpenSSL's several kinds for a bad PEM or a mismatch
        raise ValueError(f"--tls-certificate/--tls-private-key: {e}") from None
    trust_root = None
    if client_ca:
        try:
            trust_root = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(Path(client_ca).read_bytes())])
        except Exception as e:
            raise ValueError(f"--tls-client-ca: {client_ca}: {e}") from None
    return ssl.CertificateOptions(
        privateKey=own.privateKey.original.to_cryptography_key(),
        certificate=own.original.to_cryptography(),
        trustRoot=trust_root,  # set: a client certificate it signed is required
        acceptableProtocols=[b"h2", b"http/1.1"],
    )


def with_tls(factory: Any, options: ssl.CertificateOptions | None) -> Any:
    """``factory`` behind TLS with ``options``; as it is when ``options`` is None."""
    return factory if options is None else TLSMemoryBIOFactory(options, False, factory)
