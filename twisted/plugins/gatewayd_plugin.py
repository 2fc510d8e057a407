"""``twist gatewayd``: the gateway (``--config FILE`` for production, ``--dev`` to try it)."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IServiceMaker, Service
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

#: The flag that lets dev mode listen where other machines can reach it; its name says what it risks.
REMOTE_DEV_FLAG = "dev-insecure-allow-remote-logins"


class GatewayOptions(usage.Options):
    """Command-line options of ``twist gatewayd``."""

    optParameters = [
        ["config", "c", None, "TOML configuration file (see conf/gatewayd.toml)."],
        ["listen", "l", None, "Endpoint string to listen on (overrides server.listen), e.g. tcp:8080."],
        ["state-dir", None, None, "Dev mode: folder for the generated gateway key (default ./.gatewayd-dev)."],
        ["log-json", None, None,
         "Also write JSON-lines logs (no payloads or keys) to this file, reopened on SIGHUP; '-' for stdout. "
         "Default: $GATEWAYD_LOG_JSON."],
    ]
    optFlags = [
        ["dev", None, "Run with the in-process reference backend, in-memory stores and a generated key."],
        [REMOTE_DEV_FLAG, None,
         "Dev mode only: allow listening on a non-loopback address, where anyone who reaches the port "
         "can log in as any user with the fixed dev email code."],
    ]

    def postOptions(self) -> None:
        if not self["dev"] and not self["config"]:
            raise usage.UsageError("give --config FILE (production) or --dev (local development)")
        if self[REMOTE_DEV_FLAG] and not self["dev"]:
            raise usage.UsageError(f"--{REMOTE_DEV_FLAG} only applies to --dev")


@implementer(IServiceMaker, IPlugin)
class GatewayServiceMaker:
    tapname = "gatewayd"
    description = "gatewayd: gRPC, gRPC-Web and Connect on one port, verified and signed"
    options = GatewayOptions

    def makeService(self, options: Any) -> Service:
        from pathlib import Path

        from twisted.internet import reactor

        from gatewayd import config as config_module
        from gatewayd.devmode import dev_config, start_dev_backend
        from gatewayd.observability.logs import install_from_environment, install_json_log
        from gatewayd.service import GatewayService, StartupError, load_keyring

        if options["log-json"]:
            install_json_log(options["log-json"])
        else:
            install_from_environment()

        def overrides(config: config_module.Config) -> config_module.Config:
            # The command line over the file; SIGHUP reloads apply it again (gatewayd/reload.py).
            if options["dev"]:
                config = dev_config(config, options["state-dir"])
            if options["listen"]:
                config = config.replace(server={"listen": options["listen"]})
            return config

        config_path = Path(options["config"]) if options["config"] else None
        try:
            config = overrides(config_module.load(config_path))
        except config_module.ConfigError as e:
            raise SystemExit(f"gatewayd: configuration error: {e}") from None
        if options["dev"]:
            refuse_remote_dev(config.server.listen, allowed=bool(options[REMOTE_DEV_FLAG]))
        else:
            try:
                load_keyring(config)  # refuse a missing or malformed key before twist starts
            except StartupError as e:
                raise SystemExit(f"gatewayd: {e}") from None
        return GatewayService(config, reactor, before_start=start_dev_backend if options["dev"] else None,
                              config_path=config_path, overrides=overrides)


def refuse_remote_dev(listen: str, allowed: bool) -> None:
    """Dev mode on an address other machines can reach: exit 1 saying why, unless ``allowed`` (then warn)."""
    from twisted.logger import Logger

    from gatewayd.listen_scope import remote_reach

    reason = remote_reach(listen)
    if reason is None:
        return
    if not allowed:
        raise SystemExit(
            f"gatewayd: refusing to start: dev mode lets anyone who reaches the port log in as any user "
            f"(the fixed dev email code), and {reason}. Listen on loopback, e.g. --listen "
            f"tcp:8080:interface=127.0.0.1, or accept that risk with --{REMOTE_DEV_FLAG}."
        )
    Logger().warn(
        "dev mode is reachable from other machines ({reason}): anyone who reaches it can log in as any "
        "user (--{flag})", reason=reason, flag=REMOTE_DEV_FLAG,
    )


serviceMaker = GatewayServiceMaker()
