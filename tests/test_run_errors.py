"""`esper run` with a user's mistake in its data, configuration, slots or policy file: one `esper: error:` line that
names what is wrong and how to fix it, exit status 2, no traceback, and no half-made run directory left behind."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from esper_core.cli.main import main
from esper_core.protocols import TaskData
from esper_core.tasks.fashion_mnist import FILES, FashionMnistOptions, FashionMnistTask
from esper_core.tolaria.assembly import RunError, Split, split_data
from esper_core.tolaria.options import RunOptions, TolariaOptions

from tolaria_runs import BASE

HOW_TO_GET = "apt-get install dataset-fashion-mnist"


def run_error(capsys: pytest.CaptureFixture[str], runs: Path, *settings: str, config: Path | None = None) -> str:
    """``esper run`` with BASE and ``settings``: it must exit with status 2, print exactly one ``esper: error:``
    line and no traceback, and leave nothing under ``runs``."""
    arguments = [f"--set={item}" for item in (*BASE, f"run.runs_dir={runs}", "run.epochs=1", *settings)]
    argv = ["run", "--quiet", *([str(config)] if config is not None else []), *arguments]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("esper: error: "), err
    assert not runs.exists() or list(runs.iterdir()) == [], "a run that could not start leaves no directory behind"
    return lines[0]


# -- Fashion-MNIST data ------------------------------------------------------------------------------------------


def idx_bytes(array: NDArray[np.uint8]) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def small_fashion_mnist(directory: Path, images: int = 20) -> Path:
    """Valid Fashion-MNIST files with ``images`` random images per split, the training images gzip-compressed."""
    directory.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    arrays = {
        "train_images": generator.integers(0, 256, (images, 28, 28), dtype=np.uint8),
        "train_labels": generator.integers(0, 10, images, dtype=np.uint8),
        "test_images": generator.integers(0, 256, (images, 28, 28), dtype=np.uint8),
        "test_labels": generator.integers(0, 10, images, dtype=np.uint8),
    }
    for key, array in arrays.items():
        data = idx_bytes(array)
        if key == "train_images":
            (directory / f"{FILES[key]}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / FILES[key]).write_bytes(data)
    return directory


def fashion(directory: Path) -> list[str]:
    return ["run.task=fashion-mnist", f"run.fashion-mnist.data_dir={directory}", "run.fashion-mnist.widths=[2]"]


def test_the_small_fashion_mnist_files_of_these_tests_are_valid(tmp_path: Path) -> None:
    """The control for the damaged copies below: undamaged, the same files load."""
    data = FashionMnistTask(FashionMnistOptions(data_dir=small_fashion_mnist(tmp_path / "data"))).data()
    assert data.train_inputs.shape == (20, 1, 28, 28) and data.test_targets.shape == (20,)


@pytest.mark.parametrize("layout", ["no directory", "a file", "empty", "one file only"])
def test_missing_fashion_mnist_data_is_one_line_that_says_how_to_get_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, layout: str
) -> None:
    data = tmp_path / "data"
    if layout == "a file":
        data.write_text("not a directory")
    elif layout != "no directory":
        data.mkdir()
    if layout == "one file only":
        (data / "train-images-idx3-ubyte.gz").write_bytes(b"")
    error = run_error(capsys, tmp_path / "runs", *fashion(data))
    assert HOW_TO_GET in error and str(data) in error
    missing = {"no directory": "does not exist", "a file": "is a file, not the directory", "empty": "train-images"}
    assert missing.get(layout, "train-labels-idx1-ubyte(.gz) is not in") in error


def _truncate_gzip(directory: Path) -> str:
    path = directory / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    return f"{path} is not a complete gzip file"


def _truncate_header(directory: Path) -> str:
    path = directory / "train-labels-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 0x08, 3, 0, 0]))
    return f"{path} is cut short: its header declares 3 dimensions"


def _truncate_data(directory: Path) -> str:
    path = directory / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    return f"{path} holds {20 * 28 * 28 - 5} bytes of data; its header promises {20 * 28 * 28}"


def _wrong_magic(directory: Path) -> str:
    path = directory / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x1f\x8b" + path.read_bytes()[2:])
    return f"{path} is not an IDX file (bad magic number)"


def _wrong_image_size(directory: Path) -> str:
    path = directory / "t10k-images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((20, 28, 27), dtype=np.uint8)))
    return f"{path} holds uint8 values of shape (20, 28, 27), not N x 28 x 28 bytes"


def _labels_for_images(directory: Path) -> str:
    path = directory / "t10k-images-idx3-ubyte"
    path.write_bytes((directory / "t10k-labels-idx1-ubyte").read_bytes())
    return f"{path} holds uint8 values of shape (20,), not N x 28 x 28 bytes"


def _too_few_labels(directory: Path) -> str:
    path = directory / "train-labels-idx1-ubyte"
    path.write_bytes(idx_bytes(np.zeros(19, dtype=np.uint8)))
    return f"{path} has 19 labels for the 20 images"


def _label_out_of_range(directory: Path) -> str:
    path = directory / "train-labels-idx1-ubyte"
    path.write_bytes(idx_bytes(np.full(20, 12, dtype=np.uint8)))
    return f"{path} has a label 12, outside 0..9"


DAMAGE = {
    "truncated gzip": _truncate_gzip,
    "truncated header": _truncate_header,
    "truncated data": _truncate_data,
    "wrong magic": _wrong_magic,
    "wrong image size": _wrong_image_size,
    "labels where images belong": _labels_for_images,
    "fewer labels than images": _too_few_labels,
    "a label outside the classes": _label_out_of_range,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_idx_file_is_one_line_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, damage: str
) -> None:
    data = small_fashion_mnist(tmp_path / "data")
    expected = DAMAGE[damage](data)
    error = run_error(capsys, tmp_path / "runs", *fashion(data))
    assert expected in error and HOW_TO_GET in error


# -- configuration -----------------------------------------------------------------------------------------------


def test_a_configuration_file_that_is_not_utf8_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_bytes(b"\xff\xfe[run]\n")
    error = run_error(capsys, tmp_path / "runs", config=config)
    assert f"{config} is not UTF-8 text (byte 0xff at offset 0)" in error


def test_a_directory_as_the_configuration_file_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "configs"
    config.mkdir()
    error = run_error(capsys, tmp_path / "runs", config=config)
    assert f"{config} is a directory, not a configuration file" in error


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("run.synthetic.widths=[0, -3]", "run.synthetic.widths must be whole numbers of at least 1"),
        ("run.synthetic.widths=[]", "run.synthetic.widths must list at least one width"),
        ("run.fashion-mnist.widths=[0, -3]", "run.fashion-mnist.widths must be whole numbers of at least 1"),
        ("run.synthetic.classes=0", "run.synthetic.classes must be at least 2, got 0"),
        ("run.synthetic.samples=0", "run.synthetic.samples must be at least 2, got 0"),
        ("run.synthetic.test_samples=-1", "run.synthetic.test_samples cannot be negative, got -1"),
        ("run.synthetic.features=0", "run.synthetic.features must be at least 1, got 0"),
        ("run.fashion-mnist.train_limit=-1", "run.fashion-mnist.train_limit cannot be negative, got -1"),
        ("security.nonce_capacity=0", "security.nonce_capacity must be at least 1, got 0"),
        ("security.max_future_skew_ms=-1000", "security.max_future_skew_ms cannot be negative, got -1000"),
        ("security.freshness_window_ms=-5", "security.freshness_window_ms must be at least 1000, got -5"),
    ],
)
def test_a_value_out_of_range_is_one_line_naming_key_and_source(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, setting: str, expected: str
) -> None:
    error = run_error(capsys, tmp_path / "runs", setting)
    assert expected in error and f"(from --set {setting})" in error


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            ["run.synthetic.host=cnn", "run.synthetic.features=15"],
            "run.synthetic.features (15) must be a square number with host = 'cnn'",
        ),
        (
            ["run.synthetic.host=cnn", "run.synthetic.features=4", "run.synthetic.widths=[2, 2, 2]"],
            "run.synthetic.widths (3 conv blocks) is too many for features = 4",
        ),
        (
            ["run.task=fashion-mnist", "run.fashion-mnist.widths=[1, 1, 1, 1, 1]"],
            "run.fashion-mnist.widths (5 conv blocks) is too many for host = 'cnn' with conv_head = 'flatten'",
        ),
    ],
)
def test_a_conv_host_that_cannot_be_built_is_one_line_naming_the_keys(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, settings: list[str], expected: str
) -> None:
    error = run_error(capsys, tmp_path / "runs", *settings)
    assert expected in error and "from --set" in error


def test_too_little_training_data_is_one_line_and_no_unresumable_run_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = small_fashion_mnist(tmp_path / "data")
    error = run_error(capsys, tmp_path / "runs", *fashion(data), "run.fashion-mnist.train_limit=1", "run.name=tiny")
    assert "task 'fashion-mnist' gave 1 training example" in error and "leaves none to train on" in error


def test_data_a_run_cannot_train_on_is_refused_before_training() -> None:
    options, tolaria, cpu = RunOptions(), TolariaOptions(), torch.device("cpu")

    def split(**tensors: torch.Tensor) -> Split:
        return split_data(TaskData(**tensors), options, tolaria, cpu, "mine")

    with pytest.raises(RunError, match="task 'mine' gave 3 training inputs but 2 training targets"):
        split(train_inputs=torch.zeros(3, 2), train_targets=torch.zeros(2))
    with pytest.raises(RunError, match="gave an empty training set"):
        split(train_inputs=torch.zeros(0, 2), train_targets=torch.zeros(0))
    with pytest.raises(RunError, match="gave an empty test set"):
        split(train_inputs=torch.zeros(9, 2), train_targets=torch.zeros(9), test_inputs=torch.zeros(0, 2),
              test_targets=torch.zeros(0))  # fmt: skip
    with pytest.raises(RunError, match="gave validation inputs but no validation targets"):
        split(train_inputs=torch.zeros(9, 2), train_targets=torch.zeros(9), val_inputs=torch.zeros(2, 2))
    smallest = split(train_inputs=torch.zeros(2, 2), train_targets=torch.zeros(2))
    assert (len(smallest.train[0]), len(smallest.val[0]), smallest.test) == (1, 1, None)


# -- slots -------------------------------------------------------------------------------------------------------


def test_a_slot_point_the_host_does_not_have_is_one_line_listing_the_valid_ones(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    error = run_error(capsys, tmp_path / "runs", 'run.synthetic.slots=["layers.0", "layer.1"]')
    assert "run.synthetic.slots = ['layers.0', 'layer.1']: 'layer.1' is not a module path of the MlpHost host" in error
    assert "default slot points are layers.0, layers.1" in error
    assert "every module path: flatten, layers, layers.0, layers.0.0" in error


def test_a_fashion_mnist_slot_point_the_host_does_not_have_names_its_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = small_fashion_mnist(tmp_path / "data")
    error = run_error(capsys, tmp_path / "runs", *fashion(data), 'run.fashion-mnist.slots=["blocks.7"]')
    assert "run.fashion-mnist.slots = ['blocks.7']: 'blocks.7' is not a module path of the ConvHost host" in error
    assert "default slot points are blocks.0, pool" in error


def test_checking_chosen_slot_points_leaves_the_runs_random_stream_alone() -> None:
    """The check builds a host to read its module paths; the run's initial weights must not depend on that."""
    from esper_core.tasks.synthetic import SyntheticOptions, SyntheticTask

    task = SyntheticTask(SyntheticOptions(slots=["layers.1"]))
    torch.manual_seed(0)
    assert task.slot_points() == ["layers.1"]
    drawn = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(drawn, torch.rand(3))


def test_a_repeated_slot_point_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    error = run_error(capsys, tmp_path / "runs", 'run.synthetic.slots=["layers.0", "layers.0"]')
    assert "run.synthetic.slots = ['layers.0', 'layers.0'] names 'layers.0' more than once" in error


def test_a_slot_point_before_every_trainable_layer_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    error = run_error(capsys, tmp_path / "runs", 'run.synthetic.slots=["flatten"]')
    assert "task 'synthetic' cannot have seed slots at ['flatten']" in error
    assert "slot point 'flatten' comes before every trainable parameter of the host" in error


# -- the learned policy's initial update -------------------------------------------------------------------------


def _saved_update(path: Path) -> Path:
    from esper_tamiyo.learned import LearnedPolicy, save_update

    save_update(LearnedPolicy().export_update(policy_version="v1"), path)
    return path


def _corrupt_update(path: Path) -> Path:
    data = bytearray(_saved_update(path).read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the payload: its checksum no longer matches
    path.write_bytes(bytes(data))
    return path


INITIAL_UPDATES = {
    "missing": (lambda path: path, "does not exist"),
    "a directory": (lambda path: (path.mkdir(), path)[1], "is a directory, not a policy update file"),
    "empty": (lambda path: (path.write_bytes(b""), path)[1], "is empty, not a serialized Leyline PolicyUpdate"),
    "not a PolicyUpdate": (
        lambda path: (path.write_bytes(b"\xff\xff\xff not protobuf"), path)[1],
        "is not a serialized Leyline PolicyUpdate",
    ),
    "a TOML file": (
        lambda path: (path.write_text("[tamiyo]\npolicy = 'learned'\n"), path)[1],
        "is not a serialized Leyline PolicyUpdate",
    ),
    "corrupt": (_corrupt_update, "was rejected (checksum_mismatch"),
}


@pytest.mark.parametrize("case", list(INITIAL_UPDATES))
def test_a_bad_initial_policy_update_is_one_line_naming_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str
) -> None:
    make, expected = INITIAL_UPDATES[case]
    path = make(tmp_path / "start.update")
    error = run_error(capsys, tmp_path / "runs", "tamiyo.policy=learned", f"tamiyo.learned.initial_update={path}")
    assert error.startswith("esper: error: tamiyo.learned.initial_update: ") and str(path) in error
    assert expected in error and "tamiyo.learned.initial_update" in error


def test_mirroring_the_record_on_a_bus_no_other_process_reads_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    error = run_error(capsys, tmp_path / "runs", "tolaria.publish_record=true")
    assert "tolaria.publish_record" in error and "oona.backend is 'memory'" in error and "redis://" in error
