"""The alert rules as a Prometheus rules file (YAML), for a Prometheus server that scrapes Nissa or a run.

Written by hand rather than with a YAML library: the document is small and fixed in shape, and every string is
quoted as JSON (a JSON string is a valid YAML double-quoted scalar). ``esper nissa rules`` prints it;
``promtool check rules`` accepts it (tested).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from esper_nissa.alerts.rules import AlertRule

__all__ = ["prometheus_rules"]


def prometheus_rules(rules: Iterable[AlertRule], *, group: str = "esper") -> str:
    lines = ["groups:", f"  - name: {json.dumps(group)}", "    rules:"]
    for rule in rules:
        summary = rule.summary.replace("{value:.0%}", "{{ $value | humanizePercentage }}").replace(
            "{value:.0f}", "{{ $value }}"
        )
        for label in ("run", "slot", "stream", "source", "service", "subsystem"):
            summary = summary.replace("{" + label + "}", "{{ $labels." + label + " }}")
        lines += [
            f"      - alert: {rule.name}",
            f"        expr: {json.dumps(rule.expr)}",
            f"        for: {rule.prometheus_for}",
            "        labels:",
            f"          severity: {json.dumps(rule.severity)}",
        ]
        if rule.emergency:
            lines.append(f"          emergency: {json.dumps(rule.emergency)}")
        lines += ["        annotations:", f"          summary: {json.dumps(summary)}"]
    return "\n".join(lines) + "\n"
