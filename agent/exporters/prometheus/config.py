"""Configuration of the ``prometheus`` exporter."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from agent.config.schema import Duration, HostPort, setting
from agent.server_tls import TlsServerConfig


@dataclass(frozen=True)
class PrometheusExporterConfig:
    endpoint: HostPort = setting(HostPort("0.0.0.0:9464"), doc="Listen address of the scrape endpoint.")
    path: str = setting("/metrics", doc="HTTP path Prometheus scrapes.")
    tls: TlsServerConfig = setting(
        doc="Serve the scrape endpoint over HTTPS; off unless `cert_file` is set. With `client_ca_file`, only a "
        "scraper presenting a certificate those CAs signed is served (Prometheus's `tls_config.cert_file`).",
        default_factory=TlsServerConfig,
    )
    metric_expiration: Duration = setting(
        Duration(300.0), doc="Series with no new data point for this long disappear from the endpoint.", positive=True
    )
    max_series: int = setting(
        50_000,
        doc="Most series held, `target_info` included; data points of further series are dropped and counted "
        '(`otel_sidecar_prometheus_dropped_points_total{reason="series_limit"}`). Expired series make room '
        "at the limit, scraped or not.",
        minimum=1,
    )
    add_metric_suffixes: bool = setting(
        True,
        doc="Append unit words per the OpenTelemetry→Prometheus naming rules. Counters keep `_total`: the "
        "Prometheus client library writes it, and OpenMetrics requires it.",
    )
    resource_to_telemetry_conversion: bool = setting(
        False, doc="Copy every resource attribute onto every series (default: only `job` and `instance`)."
    )
    without_scope_info: bool = setting(False, doc="Leave out the `otel_scope_name`/`otel_scope_version` labels.")
    new_series_at_zero_for: Duration = setting(
        Duration(60.0),
        doc="A counter or histogram series that starts while the agent runs is scraped at zero for this long from "
        "its first scrape, then with its value: every scraper (HA Prometheus pairs, a curl) sees it rise from zero, "
        "so `rate()` and `increase()` count its first increments (series held before the endpoint's first scrape "
        "show their value at once: docs/metrics.md). At least the longest scrape interval. 0s: off (a series first "
        "seen at its value is invisible to them).",
    )

    def validate(self) -> Iterator[tuple[str, str]]:
        if not self.path.startswith("/"):
            yield "path", "must start with /"
        if float(self.new_series_at_zero_for) >= float(self.metric_expiration):
            # A sporadic series would be scraped at zero until it expired: every count it had would be lost.
            expiration = float(self.metric_expiration)
            yield "new_series_at_zero_for", f"must be shorter than metric_expiration ({expiration:g}s)"
