"""tests/vectors/signing.json: fresh from gatewayd/signing.py, and the TypeScript client agrees.

The Python side is checked directly; the TypeScript side (web/src/signing.ts)
by its node test, run here as a child process so one pytest run holds both
implementations to the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import pytest
import pytest_twisted
from nacl.signing import SigningKey
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

from gatewayd import signing
from tests.vectors import generate_signing

ROOT = generate_signing.PATH.parents[2]
NODE_TEST = ROOT / "web" / "test" / "signing_vectors.test.mjs"
VECTORS: dict[str, Any] = json.loads(generate_signing.PATH.read_text(encoding="utf-8"))


def test_vectors_file_is_fresh() -> None:
    assert generate_signing.PATH.read_text(encoding="utf-8") == generate_signing.render(), (
        "tests/vectors/signing.json is stale: run .venv/bin/python -m tests.vectors.generate_signing"
    )


def test_key_and_key_id() -> None:
    key = SigningKey(bytes.fromhex(VECTORS["seed_hex"]))
    public = bytes(key.verify_key)
    assert public.hex() == VECTORS["public_key_hex"]
    assert signing.key_id_for(public) == VECTORS["key_id"]
    assert len(VECTORS["key_id"]) == 16


def _check(v: dict[str, Any], message: bytes) -> None:
    payload = bytes.fromhex(v["payload_hex"])
    assert signing.sha256(payload).hex() == v["payload_hash_hex"], v["name"]
    assert message.hex() == v["signing_input_hex"], v["name"]
    signature = bytes.fromhex(v["signature_hex"])
    public = bytes.fromhex(VECTORS["public_key_hex"])
    assert signing.verify(public, message, signature), v["name"]
    assert not signing.verify(public, message + b"\x00", signature), v["name"]


def test_request_vectors() -> None:
    for v in VECTORS["requests"]:
        _check(v, signing.request_signing_input(
            v["protocol_version"], v["device_session_id"], v["request_id"], int(v["timestamp_ms"]),
            v["message_type"], bytes.fromhex(v["payload_hash_hex"]),
        ))


def test_response_vectors() -> None:
    for v in VECTORS["responses"]:
        _check(v, signing.response_signing_input(
            v["protocol_version"], v["device_session_id"], v["request_id"], int(v["timestamp_ms"]),
            v["result_code"], bytes.fromhex(v["payload_hash_hex"]), v["key_id"],
        ))


def test_event_vectors() -> None:
    for v in VECTORS["events"]:
        _check(v, signing.event_signing_input(
            v["event_type"], v["event_id"], int(v["timestamp_ms"]), bytes.fromhex(v["payload_hash_hex"]),
            v["key_id"],
        ))


def test_first_request_vector_by_hand() -> None:
    # Independent of gatewayd.signing: the frame layout spelled out.
    v = VECTORS["requests"][0]
    parts = [b"gatewayd/v1/request", b"1", b"ds_abc123", b"req-1", b"1700000000000", b"user.notes.create",
             bytes.fromhex(v["payload_hash_hex"])]
    expected = b"".join(len(p).to_bytes(4, "big") + p for p in parts)
    assert expected.hex() == v["signing_input_hex"]


def _node_ready() -> bool:
    return shutil.which("node") is not None and (ROOT / "node_modules" / "esbuild").is_dir()


@pytest.mark.skipif(not _node_ready() and not os.environ.get("CI"),
                    reason="node or node_modules missing: run scripts/test-setup.sh (npm ci)")
@pytest_twisted.ensureDeferred
async def test_typescript_signing_matches_vectors() -> None:
    out, err, code = await getProcessOutputAndValue(
        "node", ["--test", str(NODE_TEST)], env=dict(os.environ), path=str(ROOT), reactor=reactor
    )
    text = out.decode(errors="replace") + err.decode(errors="replace")
    assert code == 0, text
    assert "# fail 0" in text and "# pass 5" in text, text


def test_sign_and_verify_agree_with_pynacls_objects() -> None:
    """``GatewayKey.sign`` and ``verify`` call libsodium through pynacl's bindings directly: same
    signatures as ``SigningKey.sign``, and every key or signature of the wrong size or type refused."""
    seed = bytes(range(32))
    key = signing.GatewayKey(SigningKey(seed))
    message = signing.frame(b"context", b"payload")
    signature = key.sign(message)
    assert signature == SigningKey(seed).sign(message).signature
    assert signing.verify(key.public_key, message, signature)
    assert not signing.verify(key.public_key, message + b"x", signature)
    assert not signing.verify(key.public_key, message, signature[:-1] + bytes([signature[-1] ^ 1]))
    bad_keys: list[Any] = [key.public_key[:31], key.public_key + b"\0", bytearray(key.public_key), None, ""]
    for bad_key in bad_keys:
        assert not signing.verify(bad_key, message, signature)
    bad_signatures: list[Any] = [signature[:63], signature + b"\0", bytearray(signature), None, b""]
    for bad_signature in bad_signatures:
        assert not signing.verify(key.public_key, message, bad_signature)


@pytest.mark.parametrize("version", [1, 0, 2, 10, 2**31])
@pytest.mark.parametrize("text", ["", "ds_1", "é-ü-日本", "x" * 300])
def test_signing_inputs_are_frame_of_their_parts(version: int, text: str) -> None:
    """The signing inputs are written out as one join with their constant parts framed once; they
    stay ``frame(...)`` of the parts PROTOCOL.md section 2 lists, whatever the lengths and version."""
    digest, stamp = bytes(range(32)), 1_700_000_000_123
    utf8 = text.encode()
    assert signing.request_signing_input(version, text, text + "r", stamp, text + "t", digest) == signing.frame(
        b"gatewayd/v1/request", str(version).encode(), utf8, utf8 + b"r", b"1700000000123", utf8 + b"t", digest)
    response = signing.frame(b"gatewayd/v1/response", str(version).encode(), utf8, utf8 + b"r", b"1700000000123",
                             utf8 + b"c", digest, b"k" + utf8)
    assert signing.response_signing_input(version, text, text + "r", stamp, text + "c", digest, "k" + text) == response
    assert signing.framed_response_signing_input(
        version, text, text + "r", stamp, text + "c", digest, signing.frame(b"k" + utf8)) == response
    assert signing.event_signing_input(text, text + "e", stamp, digest, "k") == signing.frame(
        b"gatewayd/v1/event", utf8, utf8 + b"e", b"1700000000123", digest, b"k")
