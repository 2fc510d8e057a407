"""The device's Ed25519 key: generated once, kept as a base64 seed in a 0600 file."""

from __future__ import annotations

import base64
from pathlib import Path

from nacl.signing import SigningKey

from gatewayd.signing import KeyFileError, read_seed, write_seed


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
        write_seed(path, bytes(self._signing_key))

    @classmethod
    def load(cls, path: Path) -> DeviceKey:
        """Read a key written by ``save``."""
        try:
            return cls.from_seed(read_seed(path, "device key"))
        except KeyFileError as e:
            raise DeviceKeyError(str(e)) from None
