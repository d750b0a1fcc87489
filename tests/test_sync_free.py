"""The training steps of both pretraining scripts, in-memory data pipeline included, read no tensor value on the host
except once per --log-every steps, and make no tensor from host data after their first step.

On a GPU every such read (Tensor.item, bool(), tolist, numpy, nonzero, a boolean-mask index, ...) makes the host wait
for the queued kernels, and every tensor made from host data (torch.tensor, as_tensor, from_numpy) is a copy to the
device. On the CPU nothing waits, but the calls are the same Python calls: the test counts them over a real training
epoch of each script, from the first batch's augmentation to the epoch's end, and asserts at most one read per log
interval and no host-made tensor after the first step (which may hold the epoch's one copy of its indices).
"""

from __future__ import annotations

import math
import traceback
from contextlib import contextmanager

import pytest
import torch

import main_deepcluster
import main_deepclusterv2
from tests.helpers import TINY_PRETRAIN
from util.data import ImageSource
from util.errors import UserError
from util.pretrain.step_log import StepLog

LOG_EVERY = 3

# Tensor methods that copy a value to the host (or need a result size only the device knows).
READS = ("item", "tolist", "numpy", "nonzero", "cpu", "unique", "__bool__", "__int__", "__float__", "__index__")
FUNCTIONS = ("nonzero", "unique", "masked_select", "argwhere")
CREATIONS = ("tensor", "as_tensor", "from_numpy")  # a tensor from host data: a host-to-device copy on a GPU


class Reads:
    """Counts host reads and host-made tensors while `on`; remembers where each happened, and the step."""

    def __init__(self) -> None:
        self.on, self.where, self.made, self.step = False, [], [], 0

    def hit(self, name: str) -> None:
        if self.on:
            self.on = False  # the stack below must not count itself
            where = f"{name} at step {self.step}, {traceback.format_stack(limit=4)[-3].strip()}"
            (self.made if name in CREATIONS else self.where).append((self.step, where))
            self.on = True


@contextmanager
def counting(monkeypatch: pytest.MonkeyPatch, module, batches_method: str):
    """Count from a script's first training step to the end of its train_one_epoch, not inside the data pipeline."""
    reads, steps = Reads(), []

    def wrap(owner, name):
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            reads.hit(name)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)

    for name in READS:
        wrap(torch.Tensor, name)
    for name in FUNCTIONS + CREATIONS:
        wrap(torch, name)
    getitem, setitem = torch.Tensor.__getitem__, torch.Tensor.__setitem__

    def masked(index) -> bool:
        parts = index if isinstance(index, tuple) else (index,)
        return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)

    def get(self, index):
        if masked(index):
            reads.hit("boolean-mask index")
        return getitem(self, index)

    def put(self, index, value):
        if masked(index):
            reads.hit("boolean-mask assignment")
        return setitem(self, index, value)

    monkeypatch.setattr(torch.Tensor, "__getitem__", get)
    monkeypatch.setattr(torch.Tensor, "__setitem__", put)

    produce = getattr(ImageSource, batches_method)

    def batches(self, *args, **kwargs):
        iterator = produce(self, *args, **kwargs)
        if not inside:  # v2 fills its memory bank with the same batches before the first epoch
            yield from iterator
            return
        reads.on, reads.step = True, 0
        for batch in iterator:  # the data pipeline counts as part of the step it feeds
            yield batch
            steps[-1] += 1
            reads.step = steps[-1]

    monkeypatch.setattr(ImageSource, batches_method, batches)
    train_one_epoch = module.train_one_epoch
    per_epoch, inside = [], []

    def epoch(*args, **kwargs):
        steps.append(0)
        before, made_before = len(reads.where), len(reads.made)
        inside.append(True)
        result = train_one_epoch(*args, **kwargs)
        reads.on = False
        inside.clear()
        per_epoch.append((steps[-1], reads.where[before:], reads.made[made_before:]))
        return result

    monkeypatch.setattr(module, "train_one_epoch", epoch)
    yield per_epoch


def check(per_epoch: list) -> None:
    assert per_epoch, "no epoch trained"
    for num_steps, reads, made in per_epoch:
        assert num_steps > LOG_EVERY, "the test needs more steps than one interval"
        assert len(reads) <= math.ceil(num_steps / LOG_EVERY), "\n".join(where for _, where in reads)
        late = [where for step, where in made if step > 0]
        assert not late, "\n".join(late)


def with_monitor(split_folder) -> list[str]:
    """The default configuration: a labelled held-out split turns the kNN monitor and the online probe on, and the
    probe steps inside every training step."""
    return ["--data", str(split_folder / "train"), "--knn-data", str(split_folder / "val")]


def test_v1_steps_read_the_device_once_per_log_interval(monkeypatch, tiny_split_folder, tmp_path):
    argv = [*TINY_PRETRAIN, *with_monitor(tiny_split_folder), "--in-memory", "--batch-size", "8", "--epochs", "2"]
    argv += ["--log-every", str(LOG_EVERY), "--wandb-mode", "disabled", "--output-dir", str(tmp_path / "v1")]
    args = main_deepcluster.get_args_parser().parse_args(argv)
    assert args.knn_every is None and args.online_probe  # left to their defaults: on
    with counting(monkeypatch, main_deepcluster, "train_batches") as per_epoch:
        main_deepcluster.main(args)
    assert args.knn_every == 1 and main_deepcluster.wants_probe(args)
    check(per_epoch)


def test_v2_steps_read_the_device_once_per_log_interval(monkeypatch, tiny_split_folder, tmp_path):
    argv = [*with_monitor(tiny_split_folder), "--arch", "resnet18", "--image-size", "32", "--in-memory"]
    argv += ["--nmb-crops", "2"]
    argv += ["--size-crops", "32", "--feat-dim", "16", "--hidden-mlp", "32", "--nmb-prototypes", "12", "8"]
    argv += ["--batch-size", "8", "--epochs", "2", "--log-every", str(LOG_EVERY), "--wandb-mode", "disabled"]
    argv += ["--output-dir", str(tmp_path / "v2")]
    args = main_deepclusterv2.get_args_parser().parse_args(argv)
    with counting(monkeypatch, main_deepclusterv2, "multicrop_batches") as per_epoch:
        main_deepclusterv2.main(args)
    assert args.knn_every == 1 and main_deepclusterv2.wants_probe(args)
    check(per_epoch)


def test_step_log_mean_and_non_finite_interval():
    losses, sizes = [2.5, 1.25, 3.0, 0.5, 4.0, 1.0, 2.0], [8, 8, 8, 8, 8, 8, 5]
    log = StepLog(LOG_EVERY, 0, len(losses), torch.device("cpu"), "lower --lr")
    for step, (loss, size) in enumerate(zip(losses, sizes, strict=True)):
        log.add(step, torch.tensor(loss), size)
    found = log.finish()
    expected = math.fsum(loss * size for loss, size in zip(losses, sizes, strict=True)) / sum(sizes)
    assert found["images"] == sum(sizes) and found["loss"] == pytest.approx(expected, rel=1e-12)

    log = StepLog(LOG_EVERY, 4, 9, torch.device("cpu"), "lower --lr")
    for step in range(3):
        log.add(step, torch.tensor(1.0), 8)
    log.add(3, torch.tensor(1.0), 8)
    with pytest.raises(UserError, match=r"loss is nan at epoch 4 steps 3-5: lower --lr; the last checkpoint is kept"):
        log.add(4, torch.tensor(float("nan")), 8)
        log.add(5, torch.tensor(1.0), 8)
