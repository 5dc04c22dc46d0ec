"""Nissa deployed as docs/nissa.md describes it: a training run on Redis, ``esper serve nissa`` in a process of its
own draining the bus, and a real Prometheus (started on 127.0.0.1 by the test) scraping it. Every query of the
Grafana dashboard (examples/grafana/esper-dashboard.json) must return data, and the alert rules file must load into
that Prometheus."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from esper_core.plugins import Registry
from esper_core.signing import SECRET_ENV_VAR
from esper_core.testing.servers import PrometheusServer, RedisServer, free_port, require_binary, wait_until
from esper_core.tolaria.assembly import start_run
from esper_core.tolaria.trainer import Trainer
from esper_kasmina import probes
from esper_nissa.alerts.promrules import prometheus_rules
from esper_nissa.alerts.rules import DEFAULT_RULES

from remote_runs import SECRET, bus_settings, start_service, stop_all
from tolaria_runs import BASE, schedule

pytestmark = pytest.mark.slow

DASHBOARD = Path(__file__).parent.parent / "examples" / "grafana" / "esper-dashboard.json"


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def query(prometheus: PrometheusServer, expr: str) -> list[dict[str, Any]]:
    answer = get_json(f"{prometheus.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


@pytest.fixture
def services() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    stop_all(started)


def test_every_dashboard_query_returns_data_from_a_real_deployment(
    tmp_path: Path,
    redis_server: RedisServer,
    services: list[subprocess.Popen[bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_binary(PrometheusServer.binary, PrometheusServer.apt_package)
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET)
    bus = bus_settings(redis_server.url)
    port = free_port()
    settings = [f"nissa.service.address=127.0.0.1:{port}", "weatherlight.health_interval_s=0.5"]
    services.append(start_service(bus, settings, tmp_path / "nissa.log", name="nissa"))
    nissa_url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return bool(get_json(f"{nissa_url}/healthz")["status"] == "ok")
        except OSError:
            return False

    wait_until(healthy, what="esper serve nissa answering /healthz", timeout_s=60)
    rules = tmp_path / "esper-rules.yml"
    rules.write_text(prometheus_rules(DEFAULT_RULES))
    with PrometheusServer(tmp_path / "prometheus", targets=[f"127.0.0.1:{port}"], rule_files=[rules]) as prometheus:
        # A real run on the same bus: germinates at epoch 1, and its first isolation check is made to fail (a cull,
        # a gate failure and an alert to graph).
        honest, calls = probes.isolation, {"n": 0}

        def breaks_once(*args: Any, **kwargs: Any) -> probes.IsolationReport:
            report = honest(*args, **kwargs)
            calls["n"] += 1
            return probes.IsolationReport(0.5, 0.1, report.loss) if calls["n"] == 1 else report

        monkeypatch.setattr(probes, "isolation", breaks_once)
        registry = Registry.create(env={})
        overrides = [*BASE, *bus, "run.epochs=8", "nissa.report.automatic=false", *schedule(1, 6)]
        overrides += [f"run.runs_dir={tmp_path}", "run.name=deployed", "nissa.sinks=[]"]
        # Without the emergency ladder's conservative mode after the violation, the second seed germinates and is
        # still in flight at the end (its alpha and contribution to graph).
        overrides += ["tolaria.emergency.enabled=false"]
        trainer = Trainer(start_run(registry, registry.load_config(env={}, overrides=overrides)))
        try:
            trainer.fit()
        finally:
            trainer.close()

        # Prometheus has scraped Nissa after the run's last decision point, twice (rates need two samples).
        wait_until(
            lambda: [r for r in query(prometheus, 'esper_epoch{run="deployed"}') if r["value"][1] == "8"],
            what="the run's last epoch in Prometheus",
            timeout_s=60,
        )
        stamp = float(query(prometheus, 'timestamp(esper_epoch{run="deployed"})')[0]["value"][1])
        wait_until(
            lambda: float(query(prometheus, 'timestamp(up{job="esper"})')[0]["value"][1]) > stamp + 1.5,
            what="two more scrapes",
            timeout_s=30,
        )
        empty = [(title, expr) for title, expr in panel_queries() if not query(prometheus, expr.replace("$run", ".*"))]
        assert not empty, f"dashboard panels without data: {empty}"
        # The rules file loaded into this Prometheus, and the isolation alert is among its rules.
        groups = get_json(f"{prometheus.url}/api/v1/rules")["data"]["groups"]
        assert {rule["name"] for group in groups for rule in group["rules"]} == {r.name for r in DEFAULT_RULES}
        summary = get_json(f"{nissa_url}/metrics/summary")
        assert summary["slo"]["decision_latency"]["events"] >= 8
        assert summary["slo"]["service_availability"]["events"] > 0
