"""Registers esper-simic with Esper through the ``esper`` entry-point group.

It implements no hooks yet: so far Simic is a Python API, episodes from run directories
(:mod:`esper_simic.experience`), rewards (:mod:`esper_simic.rewards`) and the replay store
(:mod:`esper_simic.replay`); collection, training and publication arrive with issue #13 (docs/simic.md). It is
installed and listed by ``esper plugins`` so that the package layout and discovery are real from the start.
"""
