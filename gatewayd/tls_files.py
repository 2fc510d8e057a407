"""TLS material from PEM files named by config keys, for the listener and the outgoing connections.

Every error is a ``ConfigError`` naming the key whose file cannot be used. The server
(``reload.tls_options``), the backend (``backend/tls.py``) and Redis (``stores/redis_connect.py``)
load their files here; ``client_options`` verifies a server's name (a DNS name or an IP
address) against its certificate.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

from gatewayd.config import ConfigError

_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def read_file(path: str, key: str) -> bytes:
    """The bytes of ``path``; ``ConfigError`` naming ``key`` when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{key}: {path}: {e.strerror or e}") from None


def load_trust_root(path: str, key: str) -> Any:
    """An ``IOpenSSLTrustRoot`` of the certificates in the PEM bundle ``path``."""
    try:
        pems = _PEM_CERTIFICATE.findall(read_file(path, key))
        if not pems:
            raise ValueError("no PEM certificate in it")
        return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(pem) for pem in pems])
    except ConfigError:
        raise
    except Exception as e:  # pyOpenSSL raises several kinds for a bad PEM
        raise ConfigError(f"{key}: {path}: not a PEM CA bundle: {e}") from None


def load_certificate(cert_path: str, cert_key: str, key_path: str, key_key: str) -> ssl.PrivateCertificate:
    """The certificate in ``cert_path`` with its private key in ``key_path`` (PEM)."""
    cert = read_file(cert_path, cert_key)
    key = read_file(key_path, key_key)
    try:
        return ssl.PrivateCertificate.loadPEM(cert + b"\n" + key)
    except Exception as e:  # OpenSSL's errors: unreadable PEM, a key that does not match
        raise ConfigError(f"{cert_key}: cannot load it with {key_key}: {e}") from None


def client_options(hostname: str, trust_root: Any = None, client_certificate: ssl.PrivateCertificate | None = None,
                   protocols: list[bytes] | None = None) -> IOpenSSLClientConnectionCreator:
    """Client TLS to ``hostname``: its certificate must chain to ``trust_root`` (``None``: the
    platform's trust store); ``client_certificate`` is presented when asked (mutual TLS); ALPN
    offers ``protocols`` when given."""
    return ssl.optionsForClientTLS(hostname, trustRoot=trust_root, clientCertificate=client_certificate,
                                   acceptableProtocols=protocols)


__all__ = ["client_options", "load_certificate", "load_trust_root", "read_file"]
