"""gatewayctl's state folder: the device key and the session, readable by the owner only.

Layout: ``device.key`` (base64 Ed25519 seed) and ``session.json``
(``{"gateway", "device_session_id", "user_id", "email"}``). The folder is
mode 0700 and every file 0600, set on each write.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gatewayd.client.client import DeviceSession
from gatewayd.client.keys import DeviceKey

ENV_CONFIG_DIR = "GATEWAYCTL_CONFIG_DIR"


class ConfigDirError(Exception):
    """The state folder or a file in it is unusable; the message says which and why."""


def default_config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$GATEWAYCTL_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/gatewayctl``, else ``~/.config/gatewayctl``."""
    env = os.environ if environ is None else environ
    if env.get(ENV_CONFIG_DIR):
        return Path(env[ENV_CONFIG_DIR])
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "gatewayctl"


@dataclass(frozen=True)
class StoredSession:
    """What ``login`` leaves behind for the other commands."""

    gateway: str
    session: DeviceSession
    email: str = ""


class ConfigDir:
    """The device key and the current session in one private folder."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def key_path(self) -> Path:
        return self.path / "device.key"

    @property
    def session_path(self) -> Path:
        return self.path / "session.json"

    def ensure(self) -> None:
        """Create the folder (0700), or tighten an existing one to 0700."""
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.path, 0o700)
        except OSError as e:
            raise ConfigDirError(f"config folder {self.path}: {e.strerror or e}") from None

    def device_key(self, create: bool = False) -> DeviceKey | None:
        """The stored device key; with ``create``, generated and saved first when there is none."""
        if self.key_path.exists():
            from gatewayd.client.keys import DeviceKeyError

            try:
                return DeviceKey.load(self.key_path)
            except DeviceKeyError as e:
                raise ConfigDirError(str(e)) from None
        if not create:
            return None
        self.ensure()
        key = DeviceKey.generate()
        try:
            key.save(self.key_path)
        except OSError as e:
            raise ConfigDirError(f"device key {self.key_path}: {e.strerror or e}") from None
        return key

    def load_session(self) -> StoredSession | None:
        if not self.session_path.exists():
            return None
        try:
            doc = json.loads(self.session_path.read_text())
            return StoredSession(str(doc["gateway"]),
                                 DeviceSession(str(doc["device_session_id"]), str(doc["user_id"])),
                                 str(doc.get("email", "")))
        except OSError as e:
            raise ConfigDirError(f"session {self.session_path}: {e.strerror or e}") from None
        except (ValueError, KeyError, TypeError):
            raise ConfigDirError(f"session {self.session_path}: malformed; log in again") from None

    def save_session(self, stored: StoredSession) -> None:
        self.ensure()
        doc = {"gateway": stored.gateway, "device_session_id": stored.session.device_session_id,
               "user_id": stored.session.user_id, "email": stored.email}
        try:
            fd = os.open(self.session_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=2)
                f.write("\n")
            os.chmod(self.session_path, 0o600)
        except OSError as e:
            raise ConfigDirError(f"session {self.session_path}: {e.strerror or e}") from None


def write_new_file(path: Path, write: Callable[[Path], object], *, mode: int, replace: bool = False) -> None:
    """Make ``path`` appear complete and with ``mode`` in one step, or not at all.

    ``write`` fills a temporary file beside ``path``; it is then linked into
    place (failing if ``path`` exists: ``ConfigDirError``) or, with ``replace``,
    renamed over it. A replaced file never keeps its old, perhaps wider, mode.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(temporary)
        os.chmod(temporary, mode)
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)  # atomic: fails with EEXIST rather than overwrite
    except FileExistsError:
        raise ConfigDirError(f"{path} exists; use --force to replace it") from None
    except OSError as e:
        raise ConfigDirError(f"{path}: {e.strerror or e}") from None
    finally:
        temporary.unlink(missing_ok=True)
