"""Generated Leyline bindings (``esper.leyline.v1``). Do not edit the ``*_pb2`` modules: change ``contracts/`` and
run ``scripts/generate_leyline.py``. Import from :mod:`esper_core.leyline` instead of from here."""
