"""Hypothesis settings shared by the property tests of the conformance suites."""

from __future__ import annotations

from hypothesis import HealthCheck

#: A suite's property test runs once per subclass, each with its own function-scoped fixture. Hypothesis sees one
#: test function called from several classes ("differing executors") with a fixture it cannot reset between
#: examples; both are by design here (every example builds its own input from the fixture's plugin).
SHARED_ACROSS_SUBCLASSES = [HealthCheck.function_scoped_fixture, HealthCheck.differing_executors]
