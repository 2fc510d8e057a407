"""SIGHUP: re-read the config file; apply what may change under running calls (PROTOCOL.md section 8).

Applied to calls that start after the reload, while open connections and event
streams stay as they are: the signing key and published keys (``[keys]``), the TLS
certificate and key, budgets (``[limits]``, ``[public]``), CORS origins, routes, the
access log (a changed ``target`` is opened before anything is applied; SIGHUP also reopens
its file), heartbeats and the log level. Every other key (listen address, stores,
backend, size limits...) needs a restart: a change to one is logged as a warning and
the running value stays.

Everything is loaded and checked before anything is applied, so a file that does not
parse or validate, or names a key or certificate that cannot be read, is refused with
one logged error naming the key and the running configuration stays whole.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from gatewayd import config as config_module
from gatewayd.config import Config, ConfigError
from gatewayd.signing import Keyring
from gatewayd.tls_files import load_certificate

if TYPE_CHECKING:
    from gatewayd.service import GatewayService

log = Logger()

RELOADED_SECTIONS = ("keys", "limits", "public", "routes", "access_log", "log")
RELOADED_SERVER_KEYS = ("tls_certificate", "tls_private_key", "cors_origins", "heartbeat_interval_s")


def tls_options(config: Config) -> ssl.CertificateOptions:
    """The listener's TLS settings from ``server.tls_*`` (ALPN h2 and http/1.1); ``ConfigError`` names the key."""
    server = config.server
    cert = load_certificate(server.tls_certificate, "server.tls_certificate", server.tls_private_key,
                            "server.tls_private_key")
    try:
        return ssl.CertificateOptions(
            privateKey=cert.privateKey.original.to_cryptography_key(),
            certificate=cert.original.to_cryptography(),
            acceptableProtocols=[b"h2", b"http/1.1"],
        )
    except Exception as e:  # cryptography raises several kinds for a key it cannot use
        raise ConfigError(f"server.tls_certificate: cannot use it with server.tls_private_key: {e}") from None


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """What the TLS listener asks for each new connection: swap ``options`` and later connections use it."""

    def __init__(self, options: ssl.CertificateOptions) -> None:
        self.options = options

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self.options.getContext(), None)


def _keyring(config: Config) -> Keyring:
    from gatewayd.service import StartupError, load_keyring

    try:
        return load_keyring(config)
    except StartupError as e:
        message = str(e)
        if not message.startswith("keys."):
            key = "keys.published" if message.startswith("public key") else "keys.signing_key"
            message = f"{key}: {message}"
        raise ConfigError(message) from None


def needs_restart(running: Config, new: Config) -> list[str]:
    """Keys whose new value differs from the running one but cannot change without a restart."""
    changed = []
    for section in dataclasses.fields(Config):
        name = section.name
        if name in RELOADED_SECTIONS or (name == "backend" and running.dev.enabled):
            continue  # dev mode: the in-process backend decides these
        old_value, new_value = getattr(running, name), getattr(new, name)
        if not dataclasses.is_dataclass(old_value):
            continue
        for key in dataclasses.fields(old_value):
            if name == "server" and key.name in RELOADED_SERVER_KEYS:
                continue
            if getattr(old_value, key.name) != getattr(new_value, key.name):
                changed.append(f"{name}.{key.name}")
    if bool(running.server.tls_certificate) != bool(new.server.tls_certificate):
        changed.append("server.tls_certificate (turning TLS on or off)")
    return changed


class Reloader:
    """Re-reads ``path`` on SIGHUP for ``service``.

    ``overrides`` re-applies the command line (``--dev``, ``--listen``) over the file.
    """

    def __init__(self, service: GatewayService, path: Path | None, overrides: Callable[[Config], Config]) -> None:
        self.service = service
        self.path = path
        self.overrides = overrides
        self._previous_handler: Any = None

    def install(self, reactor: Any) -> None:
        """Handle SIGHUP in the reactor thread, chaining the handler that was there (``--log-json`` reopens)."""

        def on_sighup(signum: int, frame: Any) -> None:
            reactor.callFromThread(self.sighup)
            previous = self._previous_handler
            if callable(previous):
                previous(signum, frame)

        self._previous_handler = signal.signal(signal.SIGHUP, on_sighup)

    def sighup(self) -> bool:
        """Reopen the access log's file (for logrotate, whether the reload succeeds or not), then reload."""
        if self.service.gateway is not None:
            self.service.gateway.access_log.reopen()
        return self.reload()

    def reload(self) -> bool:
        """Apply the file as it is now; False (and one error logged) when it is refused."""
        service, gateway = self.service, self.service.gateway
        if gateway is None:
            return False
        if self.path is None:
            log.warn("SIGHUP: gatewayd was started without --config; nothing to re-read")
            return False
        running = service.config
        try:
            new = self.overrides(config_module.load(self.path))
            keyring = _keyring(new)
            tls = tls_options(new) if service.tls is not None and new.server.tls_certificate else None
            gateway.access_log.prepare(new.access_log)  # last: opens a changed target, used by reconfigure
        except ConfigError as e:
            log.error("configuration reload refused, the running configuration stays: {reason}", reason=str(e))
            return False
        later = needs_restart(running, new)
        merged = dataclasses.replace(
            running,
            **{name: getattr(new, name) for name in RELOADED_SECTIONS},
            server=dataclasses.replace(running.server, **{k: getattr(new.server, k) for k in RELOADED_SERVER_KEYS}),
        )
        gateway.reconfigure(merged, keyring)
        if tls is not None:
            service.tls.options = tls  # type: ignore[union-attr]
        service.level_gate.set_level(merged.log.level)
        service.config = merged
        log.info("configuration reloaded from {path}: signing key {key_id}, pid {pid}",
                 path=str(self.path), key_id=keyring.signer.key_id, pid=os.getpid())
        if later:
            log.warn("configuration reload: not applied until a restart: {keys}", keys=", ".join(later))
        return True
