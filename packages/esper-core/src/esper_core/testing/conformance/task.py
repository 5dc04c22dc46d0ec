"""Every task builds a host model in which its slot points exist.

Subclass :class:`TaskConformance` and provide a ``task`` fixture. Requires torch.
"""

from __future__ import annotations

from esper_core.protocols import Task


class TaskConformance:
    def test_task_satisfies_the_protocol(self, task: Task) -> None:
        assert isinstance(task, Task)

    def test_slot_points_name_modules_of_the_model(self, task: Task) -> None:
        model = task.build_model()
        modules = dict(model.named_modules())
        points = list(task.slot_points())
        assert points, "a task places at least one seed slot"
        missing = [point for point in points if point not in modules]
        assert not missing, f"slot points not in the model: {missing}"
