"""The fashion-mnist task on the real files (Debian's dataset-fashion-mnist, installed by `make test`), its hosts,
and the configuration `make run` trains."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from esper_core.plugins import Registry
from esper_core.tasks.fashion_mnist import DataMissingError, FashionMnistOptions, FashionMnistTask
from esper_core.tasks.hosts import ConvHost
from esper_core.tasks.idx import IdxError, read_idx
from esper_core.tolaria.assembly import start_run
from esper_core.tolaria.record import read_record
from esper_core.tolaria.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def test_the_real_files_load_normalized_with_the_standard_split() -> None:
    data = FashionMnistTask(FashionMnistOptions(train_limit=5000)).data()
    assert data.train_inputs.shape == (5000, 1, 28, 28) and data.test_inputs.shape == (10000, 1, 28, 28)
    assert data.train_targets.dtype == torch.int64 and set(data.train_targets.unique().tolist()) == set(range(10))
    assert abs(float(data.train_inputs.mean())) < 1e-3 and abs(float(data.train_inputs.std()) - 1.0) < 1e-3


def test_a_directory_without_the_data_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError, match="apt-get install dataset-fashion-mnist"):
        FashionMnistTask(FashionMnistOptions(data_dir=tmp_path)).data()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DataMissingError, match="train-labels-idx1-ubyte"):
        FashionMnistTask(FashionMnistOptions(data_dir=tmp_path)).data()


def test_idx_files_that_lie_about_their_size_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 10) + bytes(9)))
    with pytest.raises(IdxError, match="promises 10"):
        read_idx(path)
    path.write_bytes(gzip.compress(b"PK\x03\x04 not idx"))
    with pytest.raises(IdxError, match="bad magic number"):
        read_idx(path)
    good = tmp_path / "good-idx3-ubyte"
    good.write_bytes(bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2, 2, 2) + bytes(range(8)))
    assert np.array_equal(read_idx(good), np.arange(8, dtype=np.uint8).reshape(2, 2, 2))


@pytest.mark.parametrize(("head", "features"), [("flatten", 2 * 7 * 7), ("gap", 2)])
def test_conv_hosts_pool_every_block_and_feed_their_head(head: str, features: int) -> None:
    host = ConvHost(1, [1, 2], 10, side=28, head=head)  # type: ignore[arg-type]
    assert host(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert host.head.in_features == features
    assert host.slot_points() == ["blocks.0", "blocks.1", "pool", "blocks.0:input->blocks.1.0", "blocks.1:input->head"]
    with pytest.raises(ValueError, match="shrink the image to nothing"):
        ConvHost(1, [1] * 6, 10, side=28)


@pytest.mark.slow
def test_the_make_run_configuration_trains(tmp_path: Path) -> None:
    """What `make run` runs, cut to two short epochs: it loads, trains the narrow CNN and records both epochs."""
    registry = Registry.create(env={})
    config = registry.load_config(
        ROOT / "examples" / "fashion-mnist.toml",
        env={},
        overrides=["run.epochs=2", "run.fashion-mnist.train_limit=3000", f"run.runs_dir={tmp_path}", "run.threads=1",
                   "nissa.report.automatic=false"],
    )  # fmt: skip
    run = start_run(registry, config)
    trainer = Trainer(run)
    try:
        summary = trainer.fit()
    finally:
        trainer.close()
    assert summary.host_parameters == 1020 and summary.epochs == 2
    assert summary.test_accuracy is not None and summary.test_accuracy > 0.5
    assert [e["epoch"] for e in read_record(run.run_dir) if e["kind"] == "epoch"] == [1, 2]
