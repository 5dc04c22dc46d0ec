"""Esper's testing kit, for Esper's own tests and for plugin authors.

- :mod:`esper_core.testing.pytest_plugin` (loaded automatically by pytest through the ``pytest11`` entry point):
  fixtures that give each test a fresh plugin manager and registry, and register a plugin for one test only.
- :mod:`esper_core.testing.strategies`: hypothesis strategies for every Leyline message.
- :mod:`esper_core.testing.bad_entries`: bus entries no consumer may be stopped by (anything anyone can write on a
  stream without the secret), as a hypothesis strategy and as a fixed corpus.
- :mod:`esper_core.testing.conformance`: base classes per plugin point; subclass one and provide its fixture to
  check that your plugin keeps the contract. Install ``esper-core[testing]`` for hypothesis.
- :mod:`esper_core.testing.processes`: a child process that prints a marker when it is ready and a test that waits
  for it, for crash tests that kill a writer at a known moment instead of sleeping "long enough".
"""
