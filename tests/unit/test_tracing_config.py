"""``[tracing]``: validation, the exporter each setting builds, and nothing built when it is off."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased

from gatewayd.config import ConfigError, TracingConfig, from_mapping
from gatewayd.observability.tracing import build_provider


def _exporters(provider: Any) -> list[Any]:
    processors = provider._active_span_processor._span_processors
    assert all(isinstance(p, BatchSpanProcessor) for p in processors)
    return [p._batch_processor._exporter for p in processors]


def test_defaults_are_off() -> None:
    config = from_mapping({})
    assert config.tracing == TracingConfig()
    assert config.tracing.enabled is False


@pytest.mark.parametrize(("table", "key"), [
    ({"exporter": "jaeger"}, "tracing.exporter"),
    ({"sample_ratio": 1.5}, "tracing.sample_ratio"),
    ({"sample_ratio": -0.1}, "tracing.sample_ratio"),
    ({"service_name": ""}, "tracing.service_name"),
    ({"enabled": "yes"}, "tracing.enabled"),
    ({"endpoit": "x"}, "tracing.endpoit"),
])
def test_bad_values_are_refused_naming_the_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_mapping({"tracing": table})


def test_otlp_without_its_package_is_refused_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def missing(name: str, *args: Any) -> Any:
        if name.startswith("opentelemetry.exporter"):
            raise ModuleNotFoundError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", missing)
    with pytest.raises(ConfigError, match=r"tracing\.exporter: 'otlp' needs"):
        from_mapping({"tracing": {"enabled": True, "exporter": "otlp"}})
    # Off, or another exporter: the package is not needed.
    from_mapping({"tracing": {"exporter": "otlp"}})
    from_mapping({"tracing": {"enabled": True, "exporter": "console"}})


def test_each_exporter_setting_builds_its_exporter() -> None:
    otlp = build_provider(TracingConfig(enabled=True, exporter="otlp", endpoint="http://collector:4318/v1/traces",
                                        sample_ratio=0.25, service_name="edge-1"))
    try:
        (exporter,) = _exporters(otlp)
        assert isinstance(exporter, OTLPSpanExporter)
        assert exporter._endpoint == "http://collector:4318/v1/traces"
        assert otlp.resource.attributes["service.name"] == "edge-1"
        assert isinstance(otlp.sampler, ParentBased)
        assert "0.25" in otlp.sampler.get_description()
    finally:
        otlp.shutdown()
    console = build_provider(TracingConfig(enabled=True, exporter="console"))
    try:
        assert [type(e) for e in _exporters(console)] == [ConsoleSpanExporter]
    finally:
        console.shutdown()
    assert _exporters(build_provider(TracingConfig(enabled=True, exporter="none"))) == []
