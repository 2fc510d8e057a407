"""``twist gatewayd-devbackend``: the reference backend on its own (PROTOCOL.md section 6)."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IServiceMaker, Service
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class DevBackendOptions(usage.Options):
    """Command-line options of ``twist gatewayd-devbackend``."""

    optParameters = [
        ["http", None, "tcp:8081:interface=127.0.0.1", "Endpoint string for the REST API."],
        ["push", None, "tcp:8082:interface=127.0.0.1", "Endpoint string for the push.v1.Push gRPC service."],
        ["email-code", None, "000000", "Fixed email code accepted besides the issued (logged) one."],
        ["tls-certificate", None, "", "PEM certificate: both ports speak TLS (ALPN h2 and http/1.1)."],
        ["tls-private-key", None, "", "PEM private key of --tls-certificate."],
        ["tls-client-ca", None, "", "PEM CA: require client certificates it signed (mTLS)."],
    ]
    optFlags = [
        ["no-fixed-code", None, "Accept only issued codes (read them in the log)."],
        ["no-debug", None, "Do not serve the debug routes (/api/v1/user/debug/..., .../internal/debug/...)."],
    ]

    def postOptions(self) -> None:
        code = self["email-code"]
        if not (len(code) == 6 and code.isdigit()):
            raise usage.UsageError("--email-code must be six digits")
        if bool(self["tls-certificate"]) != bool(self["tls-private-key"]):
            raise usage.UsageError("--tls-certificate and --tls-private-key go together")
        if self["tls-client-ca"] and not self["tls-certificate"]:
            raise usage.UsageError("--tls-client-ca needs --tls-certificate")
        self["tls"] = None
        if self["tls-certificate"]:
            from gatewayd.devbackend.tls import server_tls_options

            try:
                self["tls"] = server_tls_options(self["tls-certificate"], self["tls-private-key"],
                                                 self["tls-client-ca"])
            except ValueError as e:
                raise usage.UsageError(str(e)) from None


@implementer(IServiceMaker, IPlugin)
class DevBackendServiceMaker:
    tapname = "gatewayd-devbackend"
    description = "gatewayd reference backend: email login, sessions, profile, notes, push"
    options = DevBackendOptions

    def makeService(self, options: Any) -> Service:
        # Imported here so listing twist plugins stays cheap and never fails on our imports.
        from twisted.internet import reactor

        from gatewayd.devbackend.listeners import DevBackendService
        from gatewayd.devbackend.service import DevBackend

        backend = DevBackend(
            reactor,
            fixed_code=None if options["no-fixed-code"] else options["email-code"],
            debug=not options["no-debug"],
        )
        return DevBackendService(reactor, backend, options["http"], options["push"], tls=options["tls"])


serviceMaker = DevBackendServiceMaker()
