"""Registers esper-simic with Esper through the ``esper`` entry-point group.

It implements no hooks yet: so far Simic is its replay store (:mod:`esper_simic.replay`, a Python API); collection,
training and publication arrive with issue #13 (docs/simic.md). It is installed and listed by ``esper plugins`` so
that the package layout and discovery are real from the start.
"""
