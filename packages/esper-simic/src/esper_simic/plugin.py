"""Registers esper-simic with Esper through the ``esper`` entry-point group.

It implements no hooks yet: its components arrive with issue a later issue. It is installed and listed by
``esper plugins`` so that the package layout and discovery are real from the start.
"""
