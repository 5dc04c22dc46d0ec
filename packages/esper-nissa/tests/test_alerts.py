"""Nissa's alerts and SLOs: for-durations, de-duplication and resolution; routes (log, a real webhook on loopback);
the bus (an alert packet, an emergency signal); the rules file promtool accepts; SLO budgets and burn rates; the
HTTP endpoint."""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from esper_core.errors import ConfigError
from esper_core.leyline import EmergencyLevel, EmergencySignal, TelemetryPacket
from esper_core.telemetry import Metric, build_telemetry_packet
from esper_core.testing.servers import require_binary, wait_until
from esper_nissa.alerts.engine import AlertEngine
from esper_nissa.alerts.promrules import prometheus_rules
from esper_nissa.alerts.rules import DEFAULT_RULES, AlertRule
from esper_nissa.ingest import Nissa, configured_rules
from esper_nissa.options import AlertOptions, SloOptions
from esper_nissa.prometheus.series import SeriesStore
from esper_nissa.slo import Objective, SloTracker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def queue_rule(**changes: Any) -> AlertRule:
    rule = AlertRule(
        name="Deep",
        family="esper_oona_stream_length",
        comparison=">",
        threshold=10,
        for_samples=2,
        summary="{stream} holds {value:.0f}",
    )
    import attrs

    return attrs.evolve(rule, **changes)


def test_an_alert_fires_after_its_for_samples_once_and_resolves_once() -> None:
    series = SeriesStore()
    engine = AlertEngine(series, [queue_rule()], clock=Clock())
    states = []
    for depth in (50, 50, 50, 5, 5):
        series.set("esper_oona_stream_length", depth, run="", source="weatherlight", stream="oona.normal")
        states.append([c.state for c in engine.heartbeat()])
    assert states == [[], ["firing"], [], ["resolved"], []]
    assert series.value("esper_alert_transitions_total", alert="Deep", state="firing") == 1
    assert series.value("esper_alerts_firing", alert="Deep", severity="warning", run="", slot="") == 0


def test_for_seconds_waits_for_wall_time_too() -> None:
    series, clock = SeriesStore(), Clock()
    engine = AlertEngine(series, [queue_rule(for_samples=1, for_seconds=60)], clock=clock)
    series.set("esper_oona_stream_length", 50, stream="s")
    assert engine.heartbeat() == []
    clock.now += 61
    [change] = engine.heartbeat()
    assert change.state == "firing" and change.alert.summary == "s holds 50"


def test_a_delta_rule_fires_on_what_a_counter_added_and_each_series_alone() -> None:
    series = SeriesStore()
    [rule] = [r for r in DEFAULT_RULES if r.name == "EsperSeedIsolationViolation"]
    engine = AlertEngine(series, [rule], clock=Clock())
    series.total("esper_seed_isolation_violations_total", 0, run="r", slot="a")
    series.total("esper_seed_isolation_violations_total", 0, run="r", slot="b")
    assert engine.heartbeat(run="r") == []
    series.total("esper_seed_isolation_violations_total", 1, run="r", slot="b")
    [fired] = engine.heartbeat(run="r")
    assert (fired.state, fired.alert.labels["slot"]) == ("firing", "b")
    assert engine.heartbeat(run="other") == [], "another run's heartbeat does not evaluate this run's series"
    [resolved] = engine.heartbeat(run="r")
    assert resolved.state == "resolved"


def test_rules_are_checked_and_configured_by_name() -> None:
    with pytest.raises(ValueError, match="not one"):
        queue_rule(family="esper_no_such_family")
    with pytest.raises(ValueError, match="two alert rules are named"):
        AlertEngine(SeriesStore(), [queue_rule(), queue_rule()])
    with pytest.raises(ValueError, match="needs a counter family"):
        AlertEngine(SeriesStore(), [queue_rule(delta=True)])
    with pytest.raises(ConfigError, match="EsperNoSuchRule"):
        configured_rules(AlertOptions(disabled=["EsperNoSuchRule"]))
    with pytest.raises(ValueError, match="not an emergency level"):
        AlertOptions(emergencies={"EsperRollback": "PANIC"})
    rules = {r.name: r for r in configured_rules(AlertOptions(thresholds={"EsperOonaQueueDepthHigh": 9}))}
    assert rules["EsperOonaQueueDepthHigh"].threshold == 9


def test_the_rules_file_passes_promtool(tmp_path: Path) -> None:
    promtool = require_binary("promtool", "prometheus")
    path = tmp_path / "esper-rules.yml"
    path.write_text(prometheus_rules(DEFAULT_RULES))
    checked = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(DEFAULT_RULES)} rules found" in checked.stdout


def service_packet(up: float, restarts: float = 0) -> TelemetryPacket:
    label = {"worker": "tamiyo"}
    return build_telemetry_packet(
        source="weatherlight",
        metrics=[
            Metric("weatherlight.worker.running", up, attributes=label),
            Metric("weatherlight.worker.restarts", restarts, attributes=label),
        ],
    )


def test_alerts_go_to_the_log_the_bus_and_the_emergency_stream(caplog: pytest.LogCaptureFixture) -> None:
    published: list[tuple[Any, int]] = []
    nissa = Nissa(publish=lambda message, priority: published.append((message, priority)))
    caplog.set_level(logging.INFO, logger="esper_nissa.alerts")
    for _ in range(2):
        nissa.observe(service_packet(0.0))
    packets = [m for m, _ in published if isinstance(m, TelemetryPacket)]
    signals = [m for m, _ in published if isinstance(m, EmergencySignal)]
    assert [e.name for p in packets for e in p.events] == ["alert_firing"]
    assert packets[0].source_subsystem == "nissa" and packets[0].events[0].attributes["alert"] == "EsperServiceDown"
    [signal] = signals
    assert signal.level == EmergencyLevel.EMERGENCY_LEVEL_NOTICE and signal.origin == "nissa"
    assert "EsperServiceDown firing: the tamiyo service is not running" in caplog.text
    nissa.observe(service_packet(1.0, restarts=1))  # back, after a restart
    names = [e.name for m, _ in published if isinstance(m, TelemetryPacket) for e in m.events]
    assert names[0] == "alert_firing" and sorted(names[1:]) == ["alert_firing", "alert_resolved"]  # down resolved,
    # restarted fired
    assert "EsperServiceDown resolved" in caplog.text
    assert [a["alert"] for a in nissa.summary()["alerts"]] == ["EsperServiceRestarted"]


class Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        Hook.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_webhook_receives_each_transition_and_a_dead_one_never_blocks(caplog: pytest.LogCaptureFixture) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Hook.received = []
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        nissa = Nissa(alerts=AlertOptions(routes=["log", "webhook"], webhook_url=url))
        for up in (0.0, 0.0, 1.0):
            nissa.observe(service_packet(up))
        nissa.close()
        assert [(h["alert"], h["state"]) for h in Hook.received] == [
            ("EsperServiceDown", "firing"),
            ("EsperServiceDown", "resolved"),
        ]
        assert Hook.received[0]["labels"] == {"service": "tamiyo"} and Hook.received[0]["severity"] == "critical"
    finally:
        server.shutdown()
        server.server_close()
    dead = Nissa(alerts=AlertOptions(routes=["webhook"], webhook_url="http://127.0.0.1:9/nothing-listens"))
    for up in (0.0, 0.0):
        dead.observe(service_packet(up))  # returns at once: posting is the route's thread's business
    route = dead.routes[0]
    wait_until(lambda: route.failed, what="the webhook's failure noticed")  # type: ignore[union-attr]
    dead.close()
    assert "the alert webhook http://127.0.0.1:9/nothing-listens failed" in caplog.text


def test_slo_budgets_and_burn_rates() -> None:
    clock = Clock()
    tracker = SloTracker([Objective("latency", "fast", 0.9, window_s=86400)], clock=clock)
    for index in range(100):
        tracker.record("latency", good=index % 20 != 0)  # 5 bad of 100: half the 10 % budget
    row = tracker.summary()["latency"]
    assert (row["events"], row["bad"]) == (100, 5)
    assert row["error_budget_remaining"] == pytest.approx(0.5)
    assert row["burn_rate"]["1h"] == pytest.approx(0.5)
    clock.now += 2 * 3600  # an hour later with nothing new: the 1 h window is empty, the day still counts them
    tracker.record("latency", good=False)
    row = tracker.summary()["latency"]
    assert row["burn_rate"]["1h"] == pytest.approx(10.0)  # everything in the last hour was bad: 1.0 / 0.1
    clock.now += 2 * 86400  # the window has passed
    tracker.record("latency", good=True)
    assert tracker.summary()["latency"]["events"] == 1


def test_the_endpoint_serves_metrics_health_and_a_summary_and_names_a_taken_port() -> None:
    nissa = Nissa(slo=SloOptions(decision_latency_ms=10))
    server = nissa.serve("127.0.0.1", 0)
    try:
        for latency in (1.0, 50.0):
            nissa.observe(
                build_telemetry_packet(
                    source="tamiyo", metrics=[Metric("tamiyo.decision.latency_ms", latency)], training_run_id="r"
                )
            )
        metrics = urllib.request.urlopen(f"{server.url}/metrics", timeout=5).read().decode()
        assert 'esper_decision_latency_seconds_count{run="r"} 2.0' in metrics
        assert 'esper_slo_events_total{result="bad",slo="decision_latency"} 1.0' in metrics
        health = json.loads(urllib.request.urlopen(f"{server.url}/healthz", timeout=5).read())
        assert health["status"] == "ok" and health["packets"] == 2
        summary = json.loads(urllib.request.urlopen(f"{server.url}/metrics/summary", timeout=5).read())
        assert summary["slo"]["decision_latency"]["bad"] == 1 and summary["alerts"] == []
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{server.url}/nothing", timeout=5)
        assert missing.value.code == 404
        with pytest.raises(
            ConfigError, match=f"cannot serve metrics on 127.0.0.1:{server.port}.*nissa.prometheus.address"
        ):
            Nissa().serve("127.0.0.1", server.port)
    finally:
        nissa.close()


def test_esper_nissa_rules_writes_the_configured_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from esper_core.cli.main import main

    assert main(["nissa", "rules", "--set", 'nissa.alerts.disabled=["EsperRollback"]']) == 0
    printed = capsys.readouterr().out
    assert "alert: EsperSeedIsolationViolation" in printed and "EsperRollback" not in printed
    output = tmp_path / "rules.yml"
    assert main(["nissa", "rules", "--output", str(output)]) == 0
    assert output.read_text() == prometheus_rules(DEFAULT_RULES)
    assert main(["nissa", "rules", "--set", 'nissa.alerts.disabled=["EsperNope"]']) == 2
    assert "names the alert rule 'EsperNope', which does not exist" in capsys.readouterr().err


def test_the_reference_lists_every_family_and_rule() -> None:
    from esper_nissa.prometheus import FAMILIES

    reference = (Path(__file__).parents[3] / "docs" / "nissa.md").read_text()
    missing = [f.name for f in FAMILIES if f"`{f.name}`" not in reference]
    missing += [r.name for r in DEFAULT_RULES if f"`{r.name}`" not in reference]
    assert not missing, f"docs/nissa.md does not describe {missing}"


def test_a_rule_can_watch_one_risk_rules_firings() -> None:
    series = SeriesStore()
    [rule] = [r for r in DEFAULT_RULES if r.name == "EsperKasminaOverBudget"]
    engine = AlertEngine(series, [rule], clock=Clock())
    series.inc("esper_risk_rule_firings_total", run="r", rule="loss_spike", action="pause")
    assert engine.heartbeat(run="r") == [], "another rule's firings are not this alert's"
    states = []
    for fired in (True, True, False):
        if fired:
            series.inc("esper_risk_rule_firings_total", run="r", rule="kasmina_apply_slow", action="downgrade")
        states.append([c.state for c in engine.heartbeat(run="r")])
    assert states == [[], ["firing"], ["resolved"]]
