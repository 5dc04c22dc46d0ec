"""The ``fashion-mnist`` task: 28x28 grayscale clothing images in 10 classes, from the standard IDX files.

The data directory defaults to where Debian's ``dataset-fashion-mnist`` package puts them
(``/usr/share/datasets/fashion-mnist``); a missing directory or file is an error that says how to get the data.
The 60 000 training images are split into training and validation sets (``run.validation_fraction``, seeded); the
10 000 test images are only used for the final test accuracy.

Hosts (``[run.fashion-mnist]``): ``cnn`` (conv blocks of ``widths`` channels, each pooled, and a linear head on the
flattened map, or on the channel means with ``conv_head = "gap"``) or ``mlp`` (hidden layers of ``widths``
units). Slots go at ``slots``, by default every block (see :mod:`esper_core.tasks.hosts`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import attrs

from esper_core.config import section
from esper_core.protocols import TaskData

DEFAULT_DIRECTORY = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
HOW_TO_GET = (
    "Install Debian's package (it puts the files in /usr/share/datasets/fashion-mnist): "
    "sudo apt-get install dataset-fashion-mnist; or download the four IDX files of Fashion-MNIST "
    "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) "
    "into a directory and set run.fashion-mnist.data_dir to it."
)


class DataMissingError(FileNotFoundError):
    """The task's data files are not where the configuration says."""


@section("run.fashion-mnist")
@attrs.frozen
class FashionMnistOptions:
    #: Where the four IDX files are (gzip-compressed or not).
    data_dir: Path = DEFAULT_DIRECTORY
    host: Literal["cnn", "mlp"] = "cnn"
    #: Channels of each conv block (cnn) or units of each hidden layer (mlp).
    widths: list[int] = attrs.Factory(lambda: [8, 16])
    #: The cnn's head: "flatten" (a linear layer on the flattened last map) or "gap" (on its channel means).
    conv_head: Literal["flatten", "gap"] = "flatten"
    #: Slot points (module paths); empty means every block.
    slots: list[str] = attrs.Factory(list)
    #: Use only the first N training images (0: all), for quick runs.
    train_limit: int = 0


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.exists():
            return candidate
    raise DataMissingError(f"Fashion-MNIST file {stem}(.gz) is not in {directory}. {HOW_TO_GET}")


class FashionMnistTask:
    name = "fashion-mnist"
    classes = 10

    def __init__(self, options: FashionMnistOptions | None = None) -> None:
        self.options = options or FashionMnistOptions()

    def build_model(self) -> Any:
        from esper_core.tasks.hosts import ConvHost, MlpHost

        if self.options.host == "cnn":
            return ConvHost(1, self.options.widths, self.classes, side=28, head=self.options.conv_head)
        return MlpHost(28 * 28, self.options.widths, self.classes)

    def slot_points(self) -> list[str]:
        if self.options.slots:
            return list(self.options.slots)
        return list(self.build_model().slot_points())

    def data(self) -> TaskData:
        import numpy as np
        import torch

        from esper_core.tasks.idx import read_idx

        directory = Path(self.options.data_dir)
        if not directory.is_dir():
            raise DataMissingError(f"the Fashion-MNIST directory {directory} does not exist. {HOW_TO_GET}")
        paths = {key: _find(directory, stem) for key, stem in FILES.items()}  # all present before reading any
        arrays = {key: read_idx(path) for key, path in paths.items()}
        limit = self.options.train_limit or len(arrays["train_images"])

        def images(array: Any) -> Any:
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).unsqueeze(1) / 255.0

        train_x = images(arrays["train_images"][:limit])
        mean, std = float(train_x.mean()), float(train_x.std())
        return TaskData(
            train_inputs=(train_x - mean) / std,
            train_targets=torch.from_numpy(arrays["train_labels"][:limit].astype(np.int64)),
            test_inputs=(images(arrays["test_images"]) - mean) / std,
            test_targets=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        )

    def loss(self, outputs: Any, targets: Any) -> Any:
        from torch.nn import functional

        return functional.cross_entropy(outputs, targets)

    def correct(self, outputs: Any, targets: Any) -> Any:
        return (outputs.argmax(dim=1) == targets).sum()
