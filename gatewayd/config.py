"""Configuration: one TOML file into frozen dataclasses, validated, with defaults.

Every key has a default (``conf/gatewayd.toml`` lists them all with comments).
Unknown sections or keys and values of the wrong type are refused with a
``ConfigError`` naming the key. ``GATEWAYD_<SECTION>_<KEY>`` environment
variables override the file (values parsed as TOML, else taken as strings).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatewayd.gc_policy import check_thresholds


class ConfigError(Exception):
    """A configuration value is missing, unknown or invalid; the message names the key."""


@dataclass(frozen=True)
class Budget:
    """A rate budget: ``rate`` events per second sustained, bursts up to ``burst``."""

    rate: float
    burst: int


@dataclass(frozen=True)
class Route:
    """Where a message_type goes: an HTTP method and a path under ``/api/v1/user/``."""

    method: str
    path: str


@dataclass(frozen=True)
class ServerConfig:
    listen: str = "tcp:8080"
    tls_certificate: str = ""
    tls_private_key: str = ""
    max_message_bytes: int = 4 * 1024 * 1024
    max_concurrent_streams: int = 100
    max_header_list_bytes: int = 16 * 1024
    idle_timeout_s: float = 300.0
    request_header_timeout_s: float = 10.0
    request_body_timeout_s: float = 60.0
    keepalive_interval_s: float = 0.0
    keepalive_timeout_s: float = 20.0
    send_timeout_s: float = 30.0
    drain_timeout_s: float = 10.0
    rapid_reset_window: int = 200
    control_frame_burst: int = 200
    control_frame_rate: float = 20.0
    stream_buffer_bytes: int = 256 * 1024
    heartbeat_interval_s: float = 0.0
    trusted_proxies: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    metrics_listen: str = ""
    static_dir: str = ""
    # Operating it live (issue 11).
    reflection: bool = True
    fanout_batch: int = 500
    revocation_tombstones: int = 100_000
    listen_backlog: int = 1024
    # The cyclic GC once start-up is done (gatewayd/gc_policy.py, docs/operations.md section 9).
    gc_freeze: bool = True
    gc_thresholds: tuple[int, ...] = (700, 10, 100)


@dataclass(frozen=True)
class BackendConfig:
    base_url: str = "http://127.0.0.1:8081"
    push_endpoint: str = "tcp:host=127.0.0.1:port=8082"
    gateway_id: str = ""
    timeout_s: float = 5.0
    max_connections: int = 64
    max_waiting: int = 1024
    session_cache_ttl_s: float = 5.0
    session_cache_size: int = 100_000
    push_backoff_initial_s: float = 0.5
    push_backoff_max_s: float = 30.0
    push_resync_concurrency: int = 16
    # TLS to the backend (https base_url, tls: push endpoint): CA bundle and client certificate (issue 11).
    tls_ca_file: str = ""
    tls_client_cert: str = ""
    tls_client_key: str = ""


@dataclass(frozen=True)
class KeysConfig:
    signing_key: str = ""
    published: tuple[str, ...] = ()


@dataclass(frozen=True)
class SecurityConfig:
    freshness_window_s: float = 300.0


@dataclass(frozen=True)
class StoresConfig:
    kind: str = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "gatewayd:"
    timeout_s: float = 1.0
    # High availability and TLS (stores/redis_connect.py); checked there when kind = "redis".
    redis_sentinels: tuple[str, ...] = ()
    redis_sentinel_service: str = "mymaster"
    redis_sentinel_username: str = ""
    redis_sentinel_password: str = ""
    redis_tls_ca: str = ""
    redis_tls_certificate: str = ""
    redis_tls_private_key: str = ""
    redis_tls_server_name: str = ""


@dataclass(frozen=True)
class LimitsConfig:
    ip: Budget = Budget(rate=200.0, burst=400)
    session: Budget = Budget(rate=100.0, burst=200)
    user: Budget = Budget(rate=200.0, burst=400)
    # PROTOCOL.md section 7: one session calling one message type 100 times a second must pass.
    message_type: Budget = Budget(rate=100.0, burst=200)


@dataclass(frozen=True)
class PublicConfig:
    max_body_bytes: int = 4096
    login_ip: Budget = Budget(rate=1.0, burst=60)
    send_email: Budget = Budget(rate=0.1, burst=5)
    confirm_challenge: Budget = Budget(rate=0.1, burst=10)


@dataclass(frozen=True)
class DevConfig:
    enabled: bool = False
    email_code: str = "000000"
    state_dir: str = ".gatewayd-dev"


@dataclass(frozen=True)
class AccessLogConfig:
    enabled: bool = True
    sample_rate: float = 1.0  # share of successful requests written; failures always are
    # "": through the twisted logger (twist's log, --log-json); "-" stdout, "+" stderr or a file path:
    # gatewayd's own buffered JSON-lines writer (observability/access.py).
    target: str = ""
    flush_interval_ms: float = 100.0  # a target's records are written at most this long after they end
    buffer_bytes: int = 65536  # ...or as soon as this much is waiting
    max_pending_bytes: int = 4194304  # a target that does not keep up: records beyond this are dropped


@dataclass(frozen=True)
class TracingConfig:
    enabled: bool = False
    exporter: str = "otlp"  # "otlp" (OTLP over HTTP, the `otlp` extra), "console" or "none"
    endpoint: str = ""  # OTLP traces URL; empty: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or http://localhost:4318/v1/traces
    sample_ratio: float = 1.0  # share of new traces recorded; a client's sampled flag is followed
    service_name: str = "gatewayd"


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"  # debug, info, warn, error, critical: applies to every log observer


DEFAULT_ROUTES: Mapping[str, Route] = types.MappingProxyType(
    {
        "user.profile.get": Route("GET", "profile"),
        "user.profile.update": Route("PATCH", "profile"),
        "user.notes.create": Route("POST", "notes"),
        "user.notes.list": Route("GET", "notes"),
        "user.sessions.revoke": Route("POST", "sessions/revoke"),
    }
)


@dataclass(frozen=True)
class Config:
    server: ServerConfig = ServerConfig()
    backend: BackendConfig = BackendConfig()
    keys: KeysConfig = KeysConfig()
    security: SecurityConfig = SecurityConfig()
    stores: StoresConfig = StoresConfig()
    limits: LimitsConfig = LimitsConfig()
    public: PublicConfig = PublicConfig()
    dev: DevConfig = DevConfig()
    access_log: AccessLogConfig = AccessLogConfig()
    log: LogConfig = LogConfig()
    tracing: TracingConfig = TracingConfig()
    routes: Mapping[str, Route] = field(default_factory=lambda: DEFAULT_ROUTES)

    def replace(self, **sections: Any) -> Config:
        """A copy with sections replaced; ``replace(server={"listen": "tcp:0"})`` merges keys."""
        changes: dict[str, Any] = {}
        for name, value in sections.items():
            current = getattr(self, name)
            if isinstance(value, Mapping) and dataclasses.is_dataclass(current):
                value = dataclasses.replace(current, **value)  # type: ignore[type-var]
            changes[name] = value
        return dataclasses.replace(self, **changes)


def _convert(key: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if value < 0:
            raise ConfigError(f"{key}: must not be negative, got {value}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):  # TOML has inf and nan; a nan timer would corrupt the reactor's queue
            raise ConfigError(f"{key}: must be a finite number, got {value}")
        if value < 0:
            raise ConfigError(f"{key}: must not be negative, got {value}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(_convert(f"{key}[{i}]", item, v) for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return _build(key, hint, value)
    raise ConfigError(f"{key}: unsupported type")  # pragma: no cover - a bug in this module


def _build(prefix: str, cls: Any, table: Any) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{prefix}: expected a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in table.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in known:
            raise ConfigError(f"{key}: unknown key (known: {', '.join(sorted(known))})")
        kwargs[name] = _convert(key, hints[name], value)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{prefix}: {e}") from None


def _routes(table: Any) -> Mapping[str, Route]:
    if not isinstance(table, Mapping):
        raise ConfigError("routes: expected a table of message_type = {method, path}")
    routes = {}
    for message_type, spec in table.items():
        route = _build(f"routes.{message_type}", Route, spec)
        if route.method.upper() not in {"GET", "POST", "PUT", "PATCH", "DELETE"}:
            raise ConfigError(f"routes.{message_type}.method: unsupported HTTP method {route.method!r}")
        if route.path.startswith("/") or ".." in route.path.split("/"):
            raise ConfigError(f"routes.{message_type}.path: must be relative to /api/v1/user/")
        routes[message_type] = Route(route.method.upper(), route.path)
    return types.MappingProxyType(routes)


def _validate(config: Config) -> Config:
    if config.stores.kind not in {"memory", "redis"}:
        raise ConfigError(f"stores.kind: expected 'memory' or 'redis', got {config.stores.kind!r}")
    if config.stores.kind == "redis":
        from gatewayd.stores.redis_connect import RedisTarget

        RedisTarget.from_config(config.stores)  # raises ConfigError naming the key
    if config.server.max_concurrent_streams < 1:
        raise ConfigError("server.max_concurrent_streams: must be at least 1")
    for name in ("fanout_batch", "revocation_tombstones"):
        if getattr(config.server, name) < 1:
            raise ConfigError(f"server.{name}: must be at least 1")
    if config.backend.push_resync_concurrency < 1:
        raise ConfigError("backend.push_resync_concurrency: must be at least 1")
    if config.server.max_message_bytes < 1024:
        raise ConfigError("server.max_message_bytes: must be at least 1024")
    if config.server.listen_backlog < 1:
        raise ConfigError("server.listen_backlog: must be at least 1")
    gc_problem = check_thresholds(config.server.gc_thresholds)
    if gc_problem is not None:
        raise ConfigError(f"server.gc_thresholds: {gc_problem}")
    if config.backend.max_connections < 1:
        raise ConfigError("backend.max_connections: must be at least 1")
    if bool(config.server.tls_certificate) != bool(config.server.tls_private_key):
        raise ConfigError("server.tls_certificate and server.tls_private_key: set both or neither")
    if config.log.level not in ("debug", "info", "warn", "error", "critical"):
        raise ConfigError(f"log.level: expected debug, info, warn, error or critical, got {config.log.level!r}")
    _validate_access_log(config.access_log)
    _validate_tracing(config.tracing)
    _validate_backend_tls(config.backend)
    for name in ("ip", "session", "user", "message_type"):
        budget = getattr(config.limits, name)
        if budget.rate <= 0 or budget.burst < 1:
            raise ConfigError(f"limits.{name}: rate must be > 0 and burst >= 1")
    return config


ACCESS_LOG_STREAMS = {"-": "stdout", "+": "stderr"}
ACCESS_LOG_MAX_FLUSH_INTERVAL_MS = 60_000.0


def _validate_access_log(access: AccessLogConfig) -> None:
    if access.sample_rate > 1.0:
        raise ConfigError("access_log.sample_rate: must be between 0 and 1")
    target = access.target
    if target and target not in ACCESS_LOG_STREAMS:
        scheme = target.split(":", 1)[0]
        if target.strip() != target or "\n" in target or "\x00" in target:
            raise ConfigError(f"access_log.target: not a usable file path: {target!r}")
        if target.lower() in ("stdout", "stderr", "journal", "journald", "syslog") or (
                ":" in target and scheme.isalpha() and len(scheme) > 1 and not target.startswith("/")):
            raise ConfigError(f"access_log.target: unknown kind of target {target!r}: expected \"\" (the "
                              "twisted logger), \"-\" (stdout), \"+\" (stderr) or a file path")
        if target.endswith("/") or os.path.isdir(target):
            raise ConfigError(f"access_log.target: {target!r} is a directory, expected a file path")
    if access.flush_interval_ms > ACCESS_LOG_MAX_FLUSH_INTERVAL_MS:
        raise ConfigError(f"access_log.flush_interval_ms: at most {ACCESS_LOG_MAX_FLUSH_INTERVAL_MS:.0f}, "
                          f"got {access.flush_interval_ms}")
    if access.buffer_bytes < 1:
        raise ConfigError("access_log.buffer_bytes: must be at least 1")
    if access.max_pending_bytes < access.buffer_bytes:
        raise ConfigError(f"access_log.max_pending_bytes: must be at least access_log.buffer_bytes "
                          f"({access.buffer_bytes}), got {access.max_pending_bytes}")


def _validate_tracing(tracing: TracingConfig) -> None:
    if tracing.exporter not in ("otlp", "console", "none"):
        raise ConfigError(f"tracing.exporter: expected 'otlp', 'console' or 'none', got {tracing.exporter!r}")
    if tracing.sample_ratio > 1.0:
        raise ConfigError("tracing.sample_ratio: must be between 0 and 1")
    if not tracing.service_name:
        raise ConfigError("tracing.service_name: must not be empty")
    if tracing.enabled and tracing.exporter == "otlp":
        import importlib.util

        try:
            found = importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            raise ConfigError("tracing.exporter: 'otlp' needs the OTLP exporter: pip install 'gatewayd[otlp]'")


def _validate_backend_tls(backend: BackendConfig) -> None:
    if bool(backend.tls_client_cert) != bool(backend.tls_client_key):
        raise ConfigError("backend.tls_client_cert and backend.tls_client_key: set both or neither")


def from_mapping(data: Mapping[str, Any]) -> Config:
    """Build a validated ``Config`` from parsed TOML."""
    data = dict(data)
    routes = _routes(data.pop("routes")) if "routes" in data else DEFAULT_ROUTES
    config = _build("", Config, {k: v for k, v in data.items()})
    return _validate(dataclasses.replace(config, routes=routes))


def _env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    sections = {f.name for f in dataclasses.fields(Config)} - {"routes"}
    for name, raw in environ.items():
        if not name.startswith("GATEWAYD_"):
            continue
        rest = name[len("GATEWAYD_") :].lower()
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        if section is None:
            continue
        key = rest[len(section) + 1 :]
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        data.setdefault(section, {})[key] = value
    return data


def load(path: Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (or only defaults when ``None``), apply environment overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror or e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    data = _env_overrides(data, os.environ if environ is None else environ)
    return from_mapping(data)
