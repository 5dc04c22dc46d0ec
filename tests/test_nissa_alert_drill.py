"""Issue #14's fault drill, in a real run with the prometheus sink: an injected isolation violation fires
EsperSeedIsolationViolation (and its NOTICE on the emergency ladder), and the alert resolves once the seed is culled.
The sink's series are checked against what the run recorded."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import pytest

from esper_core.plugins import Registry
from esper_core.tolaria.assembly import start_run
from esper_core.tolaria.record import read_record
from esper_core.tolaria.trainer import Trainer
from esper_kasmina import probes

from tolaria_runs import BASE, schedule

pytestmark = pytest.mark.slow


def entries(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    return [entry for entry in read_record(run_dir) if entry["kind"] == kind]


def test_an_injected_isolation_violation_fires_its_alert_which_resolves_after_the_cull(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    honest = probes.isolation
    calls = {"n": 0}

    def breaks_once(*args: Any, **kwargs: Any) -> probes.IsolationReport:
        report = honest(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:  # the first isolation check of the run: the seed entering TRAINING
            return probes.IsolationReport(relative_difference=0.5, loss_difference=0.1, loss=report.loss)
        return report

    monkeypatch.setattr(probes, "isolation", breaks_once)
    registry = Registry.create(env={})
    settings = [*BASE, "run.epochs=6", "nissa.report.automatic=false", *schedule(1), 'nissa.sinks=["prometheus"]']
    settings += ["nissa.prometheus.address=127.0.0.1:0", f"run.runs_dir={tmp_path}", "run.name=drill"]
    # Kasmina raises ELEVATED for the violation by itself; the alert's own emergency is configured here to drill it.
    settings += ['nissa.alerts.emergencies={EsperSeedIsolationViolation = "NOTICE"}']
    trainer = Trainer(start_run(registry, registry.load_config(env={}, overrides=settings)))
    sink = trainer.run.sinks[0]
    scraped: list[str] = []
    trainer.on_epoch = lambda epoch, *_: scraped.append(
        urllib.request.urlopen(f"{sink.url}/metrics", timeout=10).read().decode()
    )
    try:
        trainer.fit()
    finally:
        trainer.close()
    run_dir = tmp_path / "drill"

    [cull] = [t for t in entries(run_dir, "transition") if t["target"] == "CULLED"]
    assert "isolation" in cull["reason"]
    history = [(c.alert.rule.name, c.state, c.alert.labels.get("slot")) for c in sink.nissa.alerts.history]
    isolation = [h for h in history if h[0] == "EsperSeedIsolationViolation"]
    assert isolation == [
        ("EsperSeedIsolationViolation", "firing", cull["slot"]),
        ("EsperSeedIsolationViolation", "resolved", cull["slot"]),
    ]
    # The alert raised NOTICE on the emergency ladder, recorded with its cause; the run went on to the end.
    notices = [e for e in entries(run_dir, "emergency") if e["origin"] == "nissa"]
    assert notices and notices[0]["level"] == "NOTICE" and "EsperSeedIsolationViolation" in notices[0]["reason"]
    assert notices[0]["epoch"] > cull["epoch"]
    assert entries(run_dir, "run_finished")
    # The scrape during the run saw the violation and the cull.
    last = scraped[-1]
    assert f'esper_seed_isolation_violations_total{{run="drill",slot="{cull["slot"]}"}} 1.0' in last
    assert 'cause="gate"' in last and 'gate="G1_GRADIENT_HEALTH"' in last
    assert any('esper_alerts_firing{alert="EsperSeedIsolationViolation"' in text for text in scraped)
