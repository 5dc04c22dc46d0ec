"""An example Esper plugin, written the way a third party would: it depends on esper-core alone.

It provides three components, each selected by name in a run configuration:

- the ``example-greedy`` Tamiyo policy (:mod:`esper_example_plugin.policy`);
- the ``example`` blueprint catalog with one blueprint, ``EX001`` (:mod:`esper_example_plugin.catalog`);
- the ``example-csv`` telemetry sink (:mod:`esper_example_plugin.sink`).

Esper finds them through the entry point ``example = "esper_example_plugin.plugin"`` in the ``esper`` group.
"""

__version__ = "0.1.0"
