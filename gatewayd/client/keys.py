"""The device's Ed25519 key: generated once, kept as a base64 seed in a 0600 file."""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from nacl.signing import SigningKey


class DeviceKeyError(Exception):
    """A device key file is unreadable or malformed; the message names the file."""


class DeviceKey:
    """An Ed25519 signing key of one device; ``public_key`` is the raw 32 bytes."""

    def __init__(self, signing_key: SigningKey) -> None:
        self._signing_key = signing_key
        self.public_key = bytes(signing_key.verify_key)

    @classmethod
    def generate(cls) -> DeviceKey:
        return cls(SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> DeviceKey:
        """A key from its 32-byte seed (deterministic keys for tests)."""
        return cls(SigningKey(seed))

    @property
    def public_key_b64(self) -> str:
        """The public key as PROTOCOL.md section 4 sends it: standard, padded base64."""
        return base64.b64encode(self.public_key).decode("ascii")

    def sign(self, message: bytes) -> bytes:
        """The 64-byte detached Ed25519 signature of ``message``."""
        return self._signing_key.sign(message).signature

    def save(self, path: Path) -> None:
        """Write the seed to ``path``, created with mode 0600 (never readable by others, even briefly)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(bytes(self._signing_key)).decode("ascii") + "\n")
        os.chmod(path, 0o600)  # an existing file keeps its mode on O_CREAT

    @classmethod
    def load(cls, path: Path) -> DeviceKey:
        """Read a key written by ``save``."""
        try:
            text = path.read_text().strip()
        except OSError as e:
            raise DeviceKeyError(f"device key {path}: {e.strerror or e}") from None
        try:
            seed = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise DeviceKeyError(f"device key {path}: not base64") from None
        if len(seed) != 32:
            raise DeviceKeyError(f"device key {path}: expected a 32-byte seed, found {len(seed)} bytes")
        return cls.from_seed(seed)
