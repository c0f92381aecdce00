"""Telemetry: Prometheus metrics (prometheus-client, one registry per app) and JSON log lines.

Metric names follow the Export Center's prep notes (export_*; docs/api.md "Metrics" lists them
with their labels, deploy/ alerts and dashboards use them, a test checks every name they use is
exported). Counters count runs *finishing* on this node since it started, as Prometheus counters
do; the gauges are read from the database at scrape time, so every node reports the same queue.
"""
from __future__ import annotations

import json
import logging
import sys
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

# Run durations: sample builds take well under a second, full corpora minutes (SLO p95 < 300 s).
DURATION_BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    """Every metric of the service, registered on its own registry (several apps per process in
    tests must not collide in the global one)."""

    def __init__(self, queue_counts=None):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs = Counter("export_runs_total", "Runs that reached a final status.",
                            ["profile", "tenant", "status"], registry=r)
        self.submitted = Counter("export_runs_submitted_total", "Runs accepted (202), by trigger.",
                                 ["profile", "tenant", "trigger"], registry=r)
        self.duration = Histogram("export_run_duration_seconds",
                                  "Wall time from start to final status of finished runs.",
                                  ["profile_kind"], buckets=DURATION_BUCKETS, registry=r)
        self.bytes = Counter("export_bytes_total", "Bytes of the outputs of succeeded runs.",
                             ["profile"], registry=r)
        self.failures = Counter("export_failures_total", "Failed runs by error code (the reason).",
                                ["error_code"], registry=r)
        self.artifacts = Counter("export_artifacts_total", "Artifacts published by succeeded runs.",
                                 ["type"], registry=r)
        self.cache_hits = Counter("export_cache_hits_total",
                                  "Build actions answered from the cache (local or remote) in runs.",
                                  registry=r)
        self.actions_executed = Counter("export_actions_executed_total",
                                        "Build actions executed (cache misses) in runs.", registry=r)
        self.verify_failures = Counter("export_verify_failures_total",
                                       "Outputs that failed verification: a signed run's bundle before "
                                       "publishing (stage=publish), a file whose blob is gone or "
                                       "damaged when served (stage=serve).", ["stage"], registry=r)
        self.recovered = Counter("export_runs_recovered_total",
                                 "Runs found running after a crash: requeued or failed.",
                                 ["outcome"], registry=r)
        self.download_bytes = Counter("export_download_bytes_total",
                                      "Bytes of run files requested for download (range-adjusted).",
                                      registry=r)
        self.quota_rejections = Counter("export_quota_rejections_total",
                                        "Run requests refused with 429 ERR_EXPORT_QUOTA.", ["tenant"],
                                        registry=r)
        self.http_requests = Counter("export_http_requests_total", "HTTP requests answered.",
                                     ["method", "route", "status"], registry=r)
        self.up = Gauge("export_service_up", "1 while the service is serving.", registry=r)
        self.up.set(1)
        if queue_counts is not None:
            r.register(_QueueCollector(queue_counts))

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)


class _QueueCollector:
    """export_runs_active{status}: queued and running runs, counted in the database per scrape."""

    def __init__(self, counts):
        self.counts = counts  # () -> {status: count}

    def describe(self):
        return [GaugeMetricFamily("export_runs_active", "Runs queued or running (database).",
                                  labels=["status"])]

    def collect(self):
        family = GaugeMetricFamily("export_runs_active", "Runs queued or running (database).",
                                   labels=["status"])
        try:
            counts = self.counts()
        except Exception:  # a scrape must not fail because the database blinked
            counts = {}
        for status in ("queued", "running"):
            family.add_metric([status], counts.get(status, 0))
        yield family


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus the record's `fields` dict
    (run_id, profile, tenant, status, duration_ms, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        entry.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, sort_keys=True, default=str)


LOG = logging.getLogger("stella_build.service")


def setup_logging(level: str = "info", stream=None) -> None:
    """JSON lines on stderr for the service's logger (uvicorn's access log stays off)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    LOG.handlers[:] = [handler]
    LOG.setLevel(level.upper())
    LOG.propagate = False


def log(msg: str, level: int = logging.INFO, **fields) -> None:
    """Log `msg` with structured `fields` (e.g. run_id=..., profile=..., duration_ms=...)."""
    LOG.log(level, msg, extra={"fields": fields})
