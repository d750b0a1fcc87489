"""The second real dataset (scikit-learn's digits), the small-data rule, the class-keeping augmentation, the floor
measured both ways and the held-out clustering metric of the monitor."""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.cluster import KMeans
from torch import nn

import main_deepclusterv2
from tests.helpers import make_image_folder, read_jsonl, run_script
from util.augment import BatchAugment, augment_preset
from util.batchnorm import BN_RECOMPUTE_BATCH, recompute_batchnorm
from util.data import DataProfile, build_source, extraction_order, profile_data, resolve_image_defaults
from util.datasets import DIGITS_SIZE, DIGITS_TEST, digits_arrays, make_digits
from util.metrics import cluster_accuracy
from util.pretrain.clock import RunClock
from util.pretrain.monitor import held_out_clustering
from util.pretrain.recipe import (
    MIN_PCA_DIM,
    MIN_STEPS_PER_CLUSTERING,
    PAPER,
    SMALL_ARCH,
    SMALL_LR,
    apply_rule,
    apply_rule_v2,
    model_defaults,
    rule,
)


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    return make_digits(tmp_path_factory.mktemp("cache"))


def test_digits_folder_holds_every_digit_once_with_its_label_and_a_stratified_split(digits_root):
    from sklearn.datasets import load_digits

    reference = load_digits()
    files = {split: sorted((digits_root / split).glob("*/*.png")) for split in ("train", "test")}
    assert len(files["test"]) == DIGITS_TEST and len(files["train"]) == len(reference.target) - DIGITS_TEST
    indices = [int(path.stem) for split in files.values() for path in split]
    assert sorted(indices) == list(range(len(reference.target)))  # every image exactly once
    for path in files["train"] + files["test"]:
        assert int(path.parent.name) == reference.target[int(path.stem)]
    # stratified: each class's share of the test split is within one image of its share of the whole set
    test_counts = Counter(int(p.parent.name) for p in files["test"])
    for digit, total in Counter(reference.target.tolist()).items():
        assert abs(test_counts[digit] - total * DIGITS_TEST / len(reference.target)) <= 1


def test_digits_images_are_the_8x8_digits_upscaled(digits_root):
    """Averaging each 4 x 4 block of a 32 px image gives back the 8 x 8 original (the upscaling is bilinear, so
    only up to its blur: a correlation of 0.9 or more for every image of the test split)."""
    pixels, _, is_test = digits_arrays()
    for path in sorted((digits_root / "test").glob("*/*.png")):
        image = np.asarray(Image.open(path), dtype=np.float64)
        assert image.shape == (DIGITS_SIZE, DIGITS_SIZE)
        blocks = image.reshape(8, 4, 8, 4).mean((1, 3))
        assert is_test[int(path.stem)]
        assert np.corrcoef(blocks.ravel(), pixels[int(path.stem)].ravel().astype(np.float64))[0, 1] >= 0.9


def test_named_datasets_resolve_like_folders(digits_root):
    cache = digits_root.parent
    train = build_source("sklearn-digits", "train", 32, augment_preset("noflip", 32), None, True, 0, cache)
    assert len(train) == 1400 and train.memory.shape == (1400, 3, 32, 32)
    assert train.images.classes == [str(d) for d in range(10)]
    assert profile_data("sklearn-digits", "train", 1000, cache) == DataProfile(1000, 32, 10)


@pytest.mark.parametrize(
    ("num", "expected"),
    [
        (1_400, {"k": 100, "pca_dim": 32, "batch_size": 64, "reassign": 8.0}),  # sklearn-digits
        (50_000, {"k": 100, "pca_dim": 256, "batch_size": 256, "reassign": 2.0}),  # cifar10: its defaults so far
        (10_000, {"k": 100, "pca_dim": 128, "batch_size": 256, "reassign": 8.0}),
        (1_281_167, {k: v for k, v in PAPER.items() if k != "lr"}),  # ImageNet: the paper's recipe
    ],
)
def test_rule_keeps_the_paper_on_imagenet_and_scales_down_below(num, expected):
    assert rule(num) == expected


@pytest.mark.parametrize("num", [256, 1_400, 5_000, 20_000, 60_000, 150_000, 2_000_000])
def test_rule_guarantees(num):
    """Steps per clustering reach MIN_STEPS_PER_CLUSTERING unless the passes are at their cap; PCA never has
    fewer than 40 images per dimension (or has the fewest dimensions); every cluster has 10 images on average, or
    more."""
    chosen = rule(num)
    steps = chosen["reassign"] * num // chosen["batch_size"]
    assert steps >= MIN_STEPS_PER_CLUSTERING or chosen["reassign"] == 8
    assert chosen["reassign"] == 1 or (chosen["reassign"] / 2) * num // chosen["batch_size"] < 300
    assert num / chosen["pca_dim"] >= 40 or chosen["pca_dim"] == MIN_PCA_DIM
    assert chosen["k"] <= num / 10


def test_rule_counts_every_process_and_flags_given_win():
    assert rule(50_000, world_size=4)["reassign"] == 8.0  # 4 x fewer steps per pass
    unset = dict.fromkeys(("pca_dim", "batch_size", "reassign", "aug", "image_size", "in_memory", "arch", "lr"))
    args = argparse.Namespace(data="sklearn-digits", k=50, sobel=False, **unset)
    departures = apply_rule(args, DataProfile(1_400, 32, 10), world_size=1)
    assert (args.k, args.pca_dim, args.batch_size, args.reassign, args.aug) == (50, 32, 64, 8.0, "noflip")
    assert (args.arch, args.lr) == (SMALL_ARCH, SMALL_LR)
    # every value that differs from the paper's, the given k too: a departure whoever chose it
    assert departures == ["--arch resnet9_w32", "--k 50", "--pca-dim 32", "--batch-size 64", "--reassign 8", "--lr 0.1"]


@pytest.mark.parametrize(
    ("image_size", "given", "expected"),
    [
        (32, None, (SMALL_ARCH, SMALL_LR)),  # CIFAR-10, the digits: the small-image network at its rate
        (64, None, (SMALL_ARCH, SMALL_LR)),
        (224, None, ("resnet18", PAPER["lr"])),  # ImageNet sizes: ResNet-18 at the paper's rate
        (32, "resnet18", ("resnet18", PAPER["lr"])),  # a network given keeps the paper's rate
        (224, SMALL_ARCH, (SMALL_ARCH, SMALL_LR)),
    ],
)
def test_rule_picks_the_network_and_its_rate_from_the_image_size(image_size, given, expected):
    chosen = model_defaults(image_size, given)
    assert (chosen["arch"], chosen["lr"]) == expected


@pytest.mark.parametrize(("image_size", "arch"), [(32, SMALL_ARCH), (224, "resnet50")])
def test_v2_recipe_picks_v1s_small_image_network_and_swavs_lars(image_size, arch):
    """DeepCluster-v2's recipe: the small-image network of v1's rule up to 64 px (ResNet-50 above), SwAV's LARS
    (trust 0.001, every tensor adapted, no clipping) at every size; flags given win."""
    parse = main_deepclusterv2.get_args_parser().parse_args
    args = parse(["--data", "cifar10", "--output-dir", "unused"])
    apply_rule_v2(args, DataProfile(50_000, image_size, 10), world_size=1)
    assert (args.arch, args.trust, args.lars_clip, args.lars_exclude_1d) == (arch, 0.001, False, False)
    given = parse(["--data", "cifar10", "--output-dir", "unused", "--arch", "resnet18_cifar", "--trust", "0.02"])
    apply_rule_v2(given, DataProfile(50_000, image_size, 10), world_size=1)
    assert (given.arch, given.trust) == ("resnet18_cifar", 0.02)


def test_image_defaults_follow_the_images(tmp_path):
    small = make_image_folder(tmp_path / "small", num_classes=2, per_class=4, size=28)
    args = argparse.Namespace(image_size=None, in_memory=None)
    resolve_image_defaults(args, profile_data(str(small), "", None, tmp_path))
    assert (args.image_size, args.in_memory) == (28, True)
    large = make_image_folder(tmp_path / "large", num_classes=2, per_class=4, size=80)
    args = argparse.Namespace(image_size=None, in_memory=None)
    resolve_image_defaults(args, profile_data(str(large), "", None, tmp_path))
    assert (args.image_size, args.in_memory) == (224, False)


def test_noflip_preset_never_mirrors():
    """An image whose left half is bright stays bright on the left under `noflip` (crops of at least 40 % of the
    area, rotations of at most 10 degrees), and is mirrored about half the time under `cifar`."""
    image = torch.zeros(256, 3, 32, 32, dtype=torch.uint8)
    image[..., :16] = 255

    def left_brighter(preset: str) -> torch.Tensor:
        spec = augment_preset(preset, 32)
        spec = type(spec)(**{**spec.__dict__, "jitter_p": 0.0, "grayscale_p": 0.0})  # geometry only
        out = BatchAugment(spec)(image, torch.Generator().manual_seed(0))
        return out[..., :16].mean((1, 2, 3)) > out[..., 16:].mean((1, 2, 3))

    assert bool(left_brighter("noflip").all())
    assert 0.3 < float(left_brighter("cifar").float().mean()) < 0.7


def test_held_out_clustering_is_the_mean_and_spread_of_its_seeded_runs():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 10
    targets = np.repeat(np.arange(4), 50)
    view = torch.from_numpy(centres[targets] + rng.normal(size=(200, 16))).float()
    result = held_out_clustering(view, targets, seeds=[1, 2, 3])
    reference = KMeans(4, n_init=10, random_state=0).fit_predict(view.numpy())
    assert 100.0 * cluster_accuracy(targets, reference) == 100.0  # the planted clusters are found by scikit-learn
    assert result["test_kmeans_acc"] == 100.0 and result["test_kmeans_acc_std"] == 0.0
    assert result["test_kmeans_nmi"] == pytest.approx(1.0) and result["test_kmeans_nmi_std"] == pytest.approx(0.0)

    noise = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    runs = [held_out_clustering(noise, targets, seeds=[seed])["test_kmeans_acc"] for seed in (1, 2, 3)]
    spread = held_out_clustering(noise, targets, seeds=[1, 2, 3])
    assert spread["test_kmeans_acc"] == pytest.approx(np.mean(runs))
    assert spread["test_kmeans_acc_std"] == pytest.approx(np.std(runs))


class ToFloat64(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()


def test_recomputed_batchnorm_is_the_average_of_the_batch_statistics(digits_root):
    """Checked in float64, where the two reductions agree to ~1e-12 whatever their order."""
    num = BN_RECOMPUTE_BATCH + 144  # two batches of unequal size
    source = build_source("sklearn-digits", "train", 32, augment_preset("noflip", 32), num, True, 0, digits_root.parent)
    torch.manual_seed(0)
    net = nn.Sequential(ToFloat64(), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    net = net.double()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    copy = recompute_batchnorm(net, source, device=torch.device("cpu"))
    means, variances = [], []
    for images, _ in source.eval_batches(extraction_order(num), BN_RECOMPUTE_BATCH, torch.device("cpu")):
        activations = net[1](images.double()).detach()
        means.append(activations.mean((0, 2, 3)))
        variances.append(activations.var((0, 2, 3), unbiased=True))
    torch.testing.assert_close(copy[2].running_mean, torch.stack(means).mean(0))
    torch.testing.assert_close(copy[2].running_var, torch.stack(variances).mean(0))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the network itself is untouched
    assert not copy.training


@pytest.mark.slow
def test_digits_run_logs_the_rule_and_the_floor_both_ways(tmp_path):
    """A tiny run on the digits with every default of the rule but the epochs and size: one start-up line with the
    chosen flags, the floor measured both ways (the higher one is the floor), the held-out clustering's spread."""
    out = tmp_path / "run"
    args = "--data sklearn-digits --subset 256 --epochs 1 --workers 0 --wandb-mode disabled"
    args = [*args.split(), "--data-cache", str(tmp_path / "cache"), "--output-dir", str(out)]
    proc = run_script("main_deepcluster.py", args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    chosen = "--image-size 32 --arch resnet9_w32 --lr 0.1 --k 25 --pca-dim 8 --batch-size 64 --reassign 8"
    assert f"256 training images of 32 px: {chosen}" in proc.stderr
    first, final = read_jsonl(out / "log.jsonl")
    assert first["knn_floor_init_bn"] == first["knn_top1"]
    assert first["knn_floor_random"] == max(first["knn_floor_init_bn"], first["knn_floor_recomputed_bn"])
    assert final["knn_floor_random"] == first["knn_floor_random"]
    assert first["train_images"] == 256 * 8 // 64 * 64
    for record in (first, final):
        assert 0 <= record["test_kmeans_acc"] <= 100 and 0 <= record["test_kmeans_acc_std"] <= 50
    checkpoint = torch.load(out / "checkpoint.pth", weights_only=False)
    departures = ["--arch resnet9_w32", "--k 25", "--pca-dim 8", "--batch-size 64", "--reassign 8", "--lr 0.1"]
    assert checkpoint["args"]["rule_departures"] == departures


def test_run_clock_yields_every_batch_and_says_one_estimate(monkeypatch, caplog):
    """20 steps timed at 0.5 s each after the first: 100 steps take 50 s; with 30 s before training an epoch takes
    80 s, and 3 epochs plus the final measurement (30 s) take 270 s."""
    now = [0.0]
    monkeypatch.setattr("util.pretrain.clock.time.perf_counter", lambda: now[0])

    def steps(count: int):
        for step in range(count):
            now[0] = 0.5 * step  # every step takes 0.5 s
            yield step

    clock = RunClock(epochs_left=4, is_main=True)
    with caplog.at_level("INFO", logger="deepcluster"):
        assert list(clock.watch(steps(100), 100, before_training=30.0, batch_images=64)) == list(range(100))
        assert list(clock.watch(steps(5), 5, before_training=30.0, batch_images=64)) == list(range(5))
    lines = [r.getMessage() for r in caplog.records if "estimate on this machine" in r.getMessage()]
    assert len(lines) == 1
    assert "1.3 min an epoch (training at 128 images/s), 4 min for the 3 epoch(s) left" in lines[0]


def test_a_folder_of_small_images_is_told_how_to_keep_mirror_sensitive_classes(caplog):
    """The pixels cannot say whether a mirror image changes a class: `cifar` (with flips) is the default for small
    images, and the run says in one line how to keep such classes."""
    unset = dict.fromkeys(("k", "pca_dim", "batch_size", "reassign", "aug", "image_size", "in_memory", "arch", "lr"))
    args = argparse.Namespace(data="/data/my-symbols", sobel=False, **unset)
    with caplog.at_level("INFO", logger="deepcluster"):
        apply_rule(args, DataProfile(3_000, 28, 20), world_size=1)
    assert (args.image_size, args.aug, args.in_memory) == (28, "cifar", True)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    expected = "--aug cifar flips images: if a mirror image changes what yours show (digits, text), pass --aug noflip"
    assert warnings == [expected]


def test_recomputing_batchnorm_draws_nothing_from_the_global_generators(digits_root):
    """The floor's BatchNorm pass keeps dropout off (AlexNet's classifier has it): measuring the floor cannot change
    the head's initialisation or any later draw of the run."""
    from models import build_model

    num = BN_RECOMPUTE_BATCH + 64
    source = build_source("sklearn-digits", "train", 64, augment_preset("noflip", 64), num, True, 0, digits_root.parent)
    net = build_model("alexnet", False)
    before = torch.get_rng_state()
    copy = recompute_batchnorm(net, source, device=torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), before)
    moved = [m for m in copy.modules() if isinstance(m, nn.BatchNorm2d)]
    assert moved and all(int(m.num_batches_tracked) == 2 for m in moved)  # num images in 2 batches, all counted


def test_eval_state_keeps_keyed_states_and_moves_unkeyed_ones_aside(tmp_path):
    from util.checkpoint import save_checkpoint
    from util.eval.state import EvalState

    path = tmp_path / "semisup_state.pth"
    old = {"version": 1, "tasks": {"k1": {"name": "pretrained", "weights": {}, "results": {"top1": 1.0}}}}
    save_checkpoint({**old, "current": None, "wandb_run": "abc"}, path)
    kept = EvalState.load(path, keyed_since=1)  # eval_semisup's version 1 was keyed by the weights' sha256
    assert kept.tasks == old["tasks"] and kept.current is None and kept.wandb_runs == {}
    moved = EvalState.load(path)  # eval_linear's version 1 was not
    assert moved.tasks == {} and not path.exists() and path.with_name(path.name + ".unkeyed").is_file()
