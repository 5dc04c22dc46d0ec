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
from esper_core.config.validators import not_negative
from esper_core.errors import TaskDataError
from esper_core.protocols import TaskData
from esper_core.tasks import checks

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


SIDE = 28
CLASSES = 10


class DataMissingError(TaskDataError, FileNotFoundError):
    """The task's data files are not where the configuration says."""


@section("run.fashion-mnist")
@attrs.frozen
class FashionMnistOptions:
    #: Where the four IDX files are (gzip-compressed or not).
    data_dir: Path = DEFAULT_DIRECTORY
    host: Literal["cnn", "mlp"] = "cnn"
    #: Channels of each conv block (cnn) or units of each hidden layer (mlp).
    widths: list[int] = attrs.field(factory=lambda: [8, 16], validator=checks.widths)
    #: The cnn's head: "flatten" (a linear layer on the flattened last map) or "gap" (on its channel means).
    conv_head: Literal["flatten", "gap"] = "flatten"
    #: Slot points (module paths); empty means every block.
    slots: list[str] = attrs.Factory(list)
    #: Use only the first N training images (0: all), for quick runs.
    train_limit: int = attrs.field(default=0, validator=not_negative)

    def __attrs_post_init__(self) -> None:
        if self.host == "cnn" and checks.pooled_side(SIDE, len(self.widths), self.conv_head) < 1:
            fit = checks.most_blocks(SIDE, self.conv_head)
            raise ValueError(
                f"widths ({len(self.widths)} conv blocks) is too many for host = 'cnn' with conv_head = "
                f"{self.conv_head!r}: the blocks halve the {SIDE}x{SIDE} image until nothing is left; at most {fit} fit"
            )


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.exists():
            return candidate
    raise DataMissingError(f"Fashion-MNIST file {stem}(.gz) is not in {directory}. {HOW_TO_GET}")


def _check_arrays(arrays: dict[str, Any], paths: dict[str, Path]) -> None:
    """The four arrays are Fashion-MNIST's: 28x28 byte images, one byte label in 0..9 per image.

    Valid IDX files of something else (MNIST's are the same shape and pass, which is harmless; a labels file in an
    images file's place is not) would otherwise fail deep inside the model with a shape error.
    """
    import numpy as np

    def refuse(key: str, what: str) -> TaskDataError:
        kind = key.replace("_", " ")
        return TaskDataError(f"{paths[key]} {what}; it is not a Fashion-MNIST {kind} file. {HOW_TO_GET}")

    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (SIDE, SIDE):
            raise refuse(
                f"{split}_images", f"holds {images.dtype} values of shape {images.shape}, not N x {SIDE} x {SIDE} bytes"
            )
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise refuse(f"{split}_labels", f"holds {labels.dtype} values of shape {labels.shape}, not N bytes")
        if len(labels) != len(images):
            images_file = paths[f"{split}_images"]
            raise refuse(f"{split}_labels", f"has {len(labels)} labels for the {len(images)} images of {images_file}")
        if len(labels) and int(labels.max()) >= CLASSES:
            raise refuse(f"{split}_labels", f"has a label {int(labels.max())}, outside 0..{CLASSES - 1}")


class FashionMnistTask:
    name = "fashion-mnist"
    classes = CLASSES

    def __init__(self, options: FashionMnistOptions | None = None) -> None:
        self.options = options or FashionMnistOptions()

    def build_model(self) -> Any:
        from esper_core.tasks.hosts import ConvHost, MlpHost

        if self.options.host == "cnn":
            return ConvHost(1, self.options.widths, self.classes, side=SIDE, head=self.options.conv_head)
        return MlpHost(SIDE * SIDE, self.options.widths, self.classes)

    def slot_points(self) -> list[str]:
        if self.options.slots:
            model = checks.built_aside(self.build_model)
            return checks.check_slot_points("run.fashion-mnist.slots", self.options.slots, model)
        return list(self.build_model().slot_points())

    def data(self) -> TaskData:
        import numpy as np
        import torch

        from esper_core.tasks.idx import IdxError, read_idx

        directory = Path(self.options.data_dir)
        if not directory.exists():
            raise DataMissingError(f"the Fashion-MNIST directory {directory} does not exist. {HOW_TO_GET}")
        if not directory.is_dir():
            raise DataMissingError(
                f"run.fashion-mnist.data_dir = {str(directory)!r} is a file, not the directory of the four IDX files. "
                f"{HOW_TO_GET}"
            )
        paths = {key: _find(directory, stem) for key, stem in FILES.items()}  # all present before reading any
        try:
            arrays = {key: read_idx(path) for key, path in paths.items()}
        except IdxError as error:
            raise IdxError(f"{error}. The Fashion-MNIST files in {directory} are damaged. {HOW_TO_GET}") from None
        _check_arrays(arrays, paths)
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
