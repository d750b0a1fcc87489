"""Argument groups shared by the entry scripts (defined once; each script exposes get_args_parser())."""

from __future__ import annotations

import argparse

from models import ARCHS
from util.datasets import default_cache_dir
from util.tracking import DEFAULT_PROJECT, WANDB_MODES


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a non-negative integer")
    return value


def add_model_args(
    parser: argparse.ArgumentParser, default_arch: str | None = "resnet18", default_text: str | None = None
) -> None:
    """--arch (default_text says how a None default is chosen) and --sobel."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--arch",
        default=default_arch,
        choices=sorted(ARCHS),
        help=f"architecture (default: {default_text or '%(default)s'})",
    )
    group.add_argument(
        "--sobel",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="fixed Sobel front end (grayscale + Sobel x/y, 2 input channels), as the paper's AlexNet/VGG16",
    )


def add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        default="cifar10",
        help="ImageFolder root (one sub-folder per class), `cifar10` for the bundled CIFAR-10 (default), or "
        "`sklearn-digits` for scikit-learn's 1,797 handwritten digits (1,400 train / 397 test, 32 px)",
    )
    group.add_argument(
        "--subset",
        type=positive_int,
        default=None,
        help="use N images: the first N of a fixed random permutation",
    )
    group.add_argument(
        "--image-size",
        type=positive_int,
        default=None,
        help="crop size in px (default: the images' own size when they are at most 64 px, as cifar10 and "
        "sklearn-digits; else 224)",
    )
    group.add_argument(
        "--in-memory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode the images once and keep them as uint8 (batched augmentation on the device); default: on for "
        "images of at most 64 px that fit in 4 GB (cifar10, sklearn-digits), else off",
    )
    group.add_argument(
        "--workers",
        type=int,
        default=4,
        help="data loading workers / decoding threads (default: %(default)s)",
    )
    group.add_argument(
        "--data-cache",
        default=str(default_cache_dir()),
        help="where cifar10 is unpacked and sklearn-digits written once (default: %(default)s; env DEEPCLUSTER_CACHE)",
    )


OUTPUT_HELP = {
    "pretraining": "run folder: checkpoint.pth, log.jsonl, config.yaml, assignments/, maps/, clusters/, wandb/ "
    "(resumed if it has a checkpoint)",
    "evaluation": "evaluation folder: results.json, config.yaml, the resumable state, wandb/ (a rerun resumes or "
    "reuses the tasks of the same weights and flags)",
}


def add_runtime_args(parser: argparse.ArgumentParser, kind: str = "pretraining") -> None:
    """--output-dir, seed, device and precision flags; `kind` (pretraining or evaluation) says what the folder holds."""
    group = parser.add_argument_group("runtime")
    group.add_argument("--output-dir", required=True, help=OUTPUT_HELP[kind])
    group.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of every random draw of the run (default: %(default)s)",
    )
    group.add_argument(
        "--device",
        default=None,
        help="cpu, cuda or cuda:N (default: cuda when available, else cpu)",
    )
    group.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="deterministic kernels (bit-exact resume on CPU; slower on GPU)",
    )
    group.add_argument(
        "--dist-timeout",
        type=float,
        default=10.0,
        help="minutes a collective waits for the other ranks before the run ends with a line naming it (default: 10; "
        "raise it when rank 0 clusters a large set on the CPU while the others wait)",
    )
    group.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="convnets in the channels_last (NHWC) memory format, for training and feature extraction (default: on; "
        "the same function to float rounding, faster convolutions on CPUs and GPUs: docs/benchmarks.md)",
    )


def add_wandb_args(parser: argparse.ArgumentParser, pretraining: bool = False) -> None:
    """W&B flags. A pretraining run is in its own group (`<output folder>-<run id>`) unless --wandb-group names one;
    an evaluation of its checkpoint joins that group and project."""
    group = parser.add_argument_group("weights & biases")
    group.add_argument(
        "--wandb-mode",
        choices=WANDB_MODES,
        default=None,
        help="default: online when W&B credentials exist, else offline (sync later with `wandb sync`)",
    )
    if pretraining:
        group.add_argument("--wandb-project", default=DEFAULT_PROJECT, help="default: %(default)s")
        group.add_argument("--wandb-entity", default=None)
        group.add_argument(
            "--wandb-group", default=None, help="group of the run (default: `<output folder name>-<run id>`)"
        )
        group.add_argument(
            "--wandb-checkpoint-every",
            type=non_negative_int,
            default=0,
            metavar="N",
            help="log checkpoint.pth as a W&B `model` artifact every N epochs and after the last (aliases latest, "
            "epoch-N; copied into W&B's staging area, so each costs the checkpoint's size on disk until synced); "
            "0: never (default)",
        )
    else:
        group.add_argument(
            "--wandb-project",
            default=None,
            help=f"default: the project of the pretraining run(s) read or evaluated, else {DEFAULT_PROJECT}",
        )
        group.add_argument("--wandb-entity", default=None, help="default: the pretraining run's")
        group.add_argument(
            "--wandb-group",
            default=None,
            help="default: the group of the pretraining run(s) read or evaluated (a checkpoint records it), so the "
            "dashboard shows them side by side; an evaluation records the checkpoint as its input artifact",
        )
    group.add_argument("--wandb-name", default=None, help="run name (default: W&B picks one)")
    group.add_argument("--wandb-tags", nargs="*", default=[], help="tags of the run")


def add_baseline_arg(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--baseline",
        choices=("all", "random", "none"),
        default="all",
        help="the trivial baselines scored beside the network, which it must beat: random = the random-init network "
        "of the same arch twice, with BatchNorm's initial statistics and with statistics recomputed on the training "
        "images (gains are over the higher); all = that and the pixels (images of at most 64 px); none (default: all)",
    )


def add_evaluated_model_args(parser: argparse.ArgumentParser) -> None:
    """--pretrained plus --arch/--sobel, which default to what the checkpoint records (None until resolved)."""
    parser.add_argument(
        "--pretrained",
        required=True,
        help="a main_deepcluster(v2).py checkpoint, a state dict of a layout docs/protocols.md lists (torchvision, "
        "mmselfsup, the original DeepCluster, SwAV; pass --arch), or `random`",
    )
    add_model_args(parser, None, "what --pretrained records")
    parser.set_defaults(sobel=None)
