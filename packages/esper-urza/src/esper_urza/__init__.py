"""Urza, Karn, Tezzeret and Urabrask: the blueprint catalog, artifact building, the artifact library and safety
measurements.

- :mod:`esper_urza.karn`: Karn, the default blueprint catalog (``KarnCatalog``);
- :mod:`esper_urza.tezzeret`: Tezzeret, which builds and checks artifacts (``Tezzeret``);
- :mod:`esper_urza.library`: Urza, the artifact library and Esper's default artifact store (``UrzaLibrary``);
- :mod:`esper_urza.service`: ``esper serve urza``, which answers kernel prefetch requests from the library;
- :mod:`esper_urza.prefetch`: the ``urza-prefetch`` store, which asks that service and opens what it stored;
- :mod:`esper_urza.parameters`: parameter and slot validation any catalog can reuse;
- :mod:`esper_urza.urabrask`: Urabrask's crucible, which measures any catalog's blueprint at a slot and judges its
  hazards by the measurements alone (the Leyline ``BSDS``).

Importing this package (or its plugin module) imports no torch; building, loading and serving modules does.
"""

__version__ = "0.1.0"
