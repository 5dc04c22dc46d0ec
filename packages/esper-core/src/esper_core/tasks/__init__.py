"""Tasks: a host model, its data, its loss and its metric. ``fashion-mnist`` and ``synthetic`` ship with core; a
user's own task is a plugin (``esper_tolaria_tasks``) or a ``module:factory`` reference in ``run.task``."""
