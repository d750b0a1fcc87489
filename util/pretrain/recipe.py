"""The defaults both pretraining scripts choose from the training set's size and image size: DeepCluster's rule
(apply_rule, docs/recipes.md "The rule") and DeepCluster-v2's recipe (apply_rule_v2, docs/deepcluster-v2.md).

The paper's recipe (k=10,000, PCA to 256, batch 256, one pass over the data per clustering) was made for ImageNet's
1.28M images. On a few thousand images it re-clusters after ~20 SGD steps (the fresh classifier has not learnt
anything yet, so the backbone follows noise) and whitens more PCA directions than the data can estimate (k-means then
splits noise). The rule keeps the paper's value of each flag wherever the data is large enough and scales it down
where it is not; every value it changes is printed at start-up and recorded as a departure. A flag given on the
command line always wins.
"""

from __future__ import annotations

import argparse
import logging
import math

from util.data import SMALL_IMAGE, DataProfile, resolve_image_defaults

logger = logging.getLogger("deepcluster")

MIN_STEPS_PER_CLUSTERING = 300  # SGD steps between two clusterings, at least (the paper: ~5,000 on ImageNet)
MAX_REASSIGN = 8  # passes over the data per clustering, at most
IMAGES_PER_PCA_DIM = 40  # training images per PCA-whitened dimension, at least
MIN_PCA_DIM = 8  # and never fewer dimensions (below 320 images the 40 per dimension are not kept)

# The paper's values (Caron et al. 2018, sections 3.2 and 4.1) of the flags the rule sets.
PAPER = {"k": 10_000, "pca_dim": 256, "batch_size": 256, "reassign": 1.0, "lr": 0.05}
PAPER_ARCH = "alexnet"  # with --sobel; its ResNet experiments use ResNet-50 (section 6)

# Images of at most SMALL_IMAGE px: the network of fast CIFAR-10 training (docs/experiments.md: learning per
# CPU-minute), whose last maps are 4 x 4 at 32 px where ResNet-18's ImageNet stem reaches 1 x 1, at twice the rate.
SMALL_ARCH, SMALL_LR = "resnet9_w32", 0.1
LARGE_ARCH = "resnet18"


def rule(num_images: int, world_size: int = 1, batch_size: int | None = None) -> dict:
    """The defaults for `num_images` training images (after --subset) on `world_size` processes: batch 256 per
    process from 10,000 images on, else 64; the fewest passes per clustering (1, 2, 4 or 8) that give at least
    MIN_STEPS_PER_CLUSTERING steps at that batch (or the given one); k = 10,000 from 500,000 images on, 1,000 from
    100,000, else 100, and at most one cluster per 10 images (at least 2); PCA to the largest power of two <=
    num_images / IMAGES_PER_PCA_DIM, between MIN_PCA_DIM and the paper's 256."""
    batch = batch_size or (256 if num_images >= 10_000 else 64)
    reassign = 1
    while reassign < MAX_REASSIGN and reassign * num_images // (batch * world_size) < MIN_STEPS_PER_CLUSTERING:
        reassign *= 2
    k = min(10_000 if num_images >= 500_000 else 1_000 if num_images >= 100_000 else 100, max(2, num_images // 10))
    pca_dim = min(256, max(MIN_PCA_DIM, 2 ** int(math.log2(max(num_images / IMAGES_PER_PCA_DIM, 1)))))
    return {"k": k, "pca_dim": pca_dim, "batch_size": batch, "reassign": float(reassign)}


def model_defaults(image_size: int, arch: str | None = None) -> dict:
    """--arch and --lr for images of this size (after --image-size): SMALL_ARCH up to SMALL_IMAGE px, else
    ResNet-18, unless `arch` is given; SMALL_LR for SMALL_ARCH (measured there), the paper's rate for the others."""
    arch = arch or (SMALL_ARCH if image_size <= SMALL_IMAGE else LARGE_ARCH)
    return {"arch": arch, "lr": SMALL_LR if arch == SMALL_ARCH else PAPER["lr"]}


def default_aug(data: str, image_size: int) -> str:
    """`noflip` for the digits, `cifar` for other small images, the paper's crop + flip at ImageNet sizes."""
    if data == "sklearn-digits":
        return "noflip"
    return "cifar" if image_size <= 64 else "paper"


def apply_rule(args: argparse.Namespace, profile: DataProfile, world_size: int) -> list[str]:
    """Fill every flag the user left unset (None) from the rule, the image defaults and default_aug; log the result
    in one line. Returns the values of the rule's flags that depart from the paper's as `--flag value` strings."""
    resolve_image_defaults(args, profile)
    chosen = {**rule(profile.num_images, world_size, args.batch_size), **model_defaults(args.image_size, args.arch)}
    for name, value in chosen.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    # every value that differs from the paper's, whoever chose it: a run replayed from its config.yaml (every value
    # given) records the same departures as the rule-driven run that wrote it
    departures = [] if args.arch == PAPER_ARCH and args.sobel else [f"--arch {args.arch}"]
    departures += [
        f"--{name.replace('_', '-')} {getattr(args, name):g}" for name in PAPER if getattr(args, name) != PAPER[name]
    ]
    guessed_aug = args.aug is None
    args.aug = args.aug or default_aug(args.data, args.image_size)
    logger.info(
        "%d training images of %d px: --image-size %d --arch %s --lr %g --k %d --pca-dim %d --batch-size %d "
        "--reassign %g --aug %s (flags not given come from the small-data rule, docs/recipes.md)",
        profile.num_images,
        profile.image_size,
        args.image_size,
        args.arch,
        args.lr,
        args.k,
        args.pca_dim,
        args.batch_size,
        args.reassign,
        args.aug,
    )
    if guessed_aug and args.aug == "cifar" and args.data != "cifar10":
        logger.warning(
            "--aug cifar flips images: if a mirror image changes what yours show (digits, text), pass --aug noflip"
        )
    return departures


def apply_rule_v2(args: argparse.Namespace, profile: DataProfile, world_size: int) -> None:
    """DeepCluster-v2's flags not given, from the data (docs/deepcluster-v2.md). Images of at most 64 px (cifar10,
    sklearn-digits, a folder of small images) get solo-learn's CIFAR-10 recipe (two crops at the images' size, no
    blur, 3 x 3000 prototypes, LARS 0.6 x batch / 256) on SMALL_ARCH, v1's network for them, with SwAV's LARS
    options at every size (the parser's defaults; docs/experiments.md: learning per CPU-minute), batch 64 below
    10,000 images and at most one prototype per 10 images; digits get no flips and crops of at least 40 %% of the
    area. Larger images get SwAV's ImageNet recipe (ResNet-50, 2 x 224 + 6 x 96 crops, LARS 0.3 x batch / 256,
    warmup from 1/16 of it)."""
    resolve_image_defaults(args, profile)
    small = args.image_size <= SMALL_IMAGE
    keep_mirror = default_aug(args.data, args.image_size) == "noflip"  # digits: a mirror image is another class
    args.arch = args.arch or (SMALL_ARCH if small else "resnet50")
    args.nmb_crops = args.nmb_crops or ([2] if small else [2, 6])
    low_res = max(1, round(args.image_size * 96 / 224))  # SwAV's 96 px at 224, scaled with --image-size
    args.size_crops = args.size_crops or ([args.image_size] if small else [args.image_size, low_res])
    args.min_scale_crops = args.min_scale_crops or ([0.4 if keep_mirror else 0.08] if small else [0.14, 0.05])
    args.max_scale_crops = args.max_scale_crops or ([1.0] if small else [1.0, 0.14])
    args.flip = (not keep_mirror) if args.flip is None else args.flip
    args.blur = (not small) if args.blur is None else args.blur  # SwAV on ImageNet; not in the CIFAR recipe
    args.epochs = args.epochs or (200 if small else 800)
    args.batch_size = args.batch_size or (64 if profile.num_images < 10_000 else 256 if small else 64)
    args.nmb_prototypes = args.nmb_prototypes or [min(3000, max(2, profile.num_images // 10))] * 3
    args.extract_batch_size = args.extract_batch_size or 2 * args.batch_size
    effective = args.batch_size * world_size
    args.base_lr = args.base_lr if args.base_lr is not None else (0.6 if small else 0.3) * effective / 256
    args.final_lr = args.final_lr if args.final_lr is not None else args.base_lr / 1000
    args.warmup_epochs = args.warmup_epochs if args.warmup_epochs is not None else min(10.0, args.epochs / 10)
    # SwAV warms up from 0.3 to 4.8 (1/16 of the peak); solo-learn's CIFAR recipe from 0
    args.start_warmup = args.start_warmup if args.start_warmup is not None else (0.0 if small else args.base_lr / 16)
