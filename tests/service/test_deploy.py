"""deploy/: the Grafana "Run Health" dashboard and the Prometheus alert rules name only metrics the
service exports, and cover what docs/api.md promises (failure rate, duration, verify failures)."""
from __future__ import annotations

import json
import re

import yaml
from prometheus_client.parser import text_string_to_metric_families

from stella_build.service.metrics import Metrics
from tests.conftest import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "run-health.json"
ALERTS = REPO / "deploy" / "prometheus" / "export-center-alerts.yaml"
_METRIC = re.compile(r"\b(export_[a-z_]+)\b")


def exported_names() -> set[str]:
    """Every sample name the service's /metrics can carry (counters' _total, histograms' _bucket...)."""
    metrics = Metrics(queue_counts=lambda: {"queued": 1, "running": 0})
    # one sample per labelled family, so every child series exists
    metrics.runs.labels("//p:a", "t", "succeeded").inc()
    metrics.submitted.labels("//p:a", "t", "api").inc()
    metrics.duration.labels("json:raw").observe(1)
    metrics.bytes.labels("//p:a").inc()
    metrics.failures.labels("action-failed").inc()
    metrics.artifacts.labels("archive").inc()
    metrics.verify_failures.labels("publish").inc()
    metrics.recovered.labels("requeued").inc()
    metrics.quota_rejections.labels("t").inc()
    metrics.http_requests.labels("GET", "/x", "200").inc()
    text = metrics.exposition().decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def _exprs_in_dashboard() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] == "Export Center / Run Health"
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def _exprs_in_alerts() -> list[tuple[str, str]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [(r["alert"], r["expr"]) for g in doc["groups"] for r in g["rules"]]


def test_every_metric_the_dashboard_and_alerts_name_is_exported():
    exported = exported_names()
    named = {m for e in _exprs_in_dashboard() for m in _METRIC.findall(e)}
    named |= {m for _, e in _exprs_in_alerts() for m in _METRIC.findall(e)}
    assert named, "no metric found: the extraction is broken"
    assert named - exported == set(), f"named but not exported: {sorted(named - exported)}"


def test_alerts_cover_failure_rate_duration_and_verify_failures():
    alerts = dict(_exprs_in_alerts())
    assert 'export_runs_total{status="failed"}' in alerts["ExportRunFailures"]
    assert "export_run_duration_seconds_bucket" in alerts["ExportRunDurationHigh"]
    assert "export_verify_failures_total" in alerts["ExportVerifyFailures"]


def test_the_check_is_not_vacuous():
    """A misspelt metric would be caught."""
    assert "export_run_failures_total" not in exported_names()
    assert {"export_runs_total", "export_run_duration_seconds_bucket", "export_bytes_total",
            "export_failures_total", "export_artifacts_total", "export_cache_hits_total",
            "export_runs_active"} <= exported_names()
