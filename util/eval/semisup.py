"""Semi-supervised fine-tuning: the labelled subsets and the published presets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from util.data import ImageList
from util.errors import UserError

# mmselfsup's configs/benchmarks/classification/imagenet/imagenet_{1,10}percent (its semi-supervised benchmark):
# SGD momentum 0.9, batch 256, 20 epochs, lr x0.2 at 12 and 16, base lr 0.1 and head lr multiplier 1 in the base config
# (the grid lr {0.001, 0.01, 0.1} x head {1, 10, 100} is swept and the best kept), weight decay 5e-4 (1 %) or
# 1e-4 (10 %), the LAST epoch reported. SwAV's eval_semisup.py: weight decay 0, trunk / head lr 0.02 / 5 (1 %) and
# 0.01 / 0.2 (10 %), the same steps, the BEST epoch reported.
PRESETS: dict[str, dict] = {
    "mmselfsup": {
        "epochs": 20,
        "milestones": (12 / 20, 16 / 20),
        "gamma": 0.2,
        "lr": {1: 0.1, 10: 0.1},
        "head_lr_mult": {1: 1.0, 10: 1.0},
        "wd": {1: 5e-4, 10: 1e-4},
        "pick": "last",
    },
    "swav": {
        "epochs": 20,
        "milestones": (12 / 20, 16 / 20),
        "gamma": 0.2,
        "lr": {1: 0.02, 10: 0.01},
        "head_lr_mult": {1: 5 / 0.02, 10: 0.2 / 0.01},
        "wd": {1: 0.0, 10: 0.0},
        "pick": "best",
    },
}


def preset_regime(percent: float) -> int:
    """Which of the presets' two settings applies: the 1 % one up to 5 %, the 10 % one above."""
    return 1 if percent <= 5 else 10


def percent_subset(images: ImageList, percent: float, seed: int) -> np.ndarray:
    """P % of every class (at least one image each), drawn with `seed` independently of everything else; sorted
    dataset indices. The same images, the same percent and seed always give the same subset."""
    if not 0 < percent <= 100:
        raise UserError(f"--percent {percent} must be in (0, 100]")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in range(len(images.classes)):
        members = np.flatnonzero(images.targets == label)
        if len(members) == 0:
            continue
        take = max(1, math.ceil(len(members) * percent / 100))
        chosen.append(rng.permutation(members)[:take])
    return np.sort(np.concatenate(chosen))


def read_subset_file(images: ImageList, path: Path) -> np.ndarray:
    """Indices of the images a subset file names: one image per line, its path relative to the split folder
    (`class/file.JPEG`, mmselfsup's lists, any extra column ignored) or its bare file name (SimCLR's lists)."""
    if not path.is_file():
        raise UserError(f"--subset-file {path} does not exist")
    relative = {str(Path(p).relative_to(images.root)): i for i, p in enumerate(images.paths)}
    by_name: dict[str, int] = {}
    for rel, i in relative.items():
        by_name.setdefault(Path(rel).name, i)
    wanted, missing = [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        entry = line.split()[0]
        index = relative.get(entry, by_name.get(entry) if "/" not in entry else None)
        (wanted if index is not None else missing).append(index if index is not None else entry)
    if missing:
        raise UserError(
            f"--subset-file {path}: {len(missing)} listed image(s) are not under {images.root} (first: {missing[0]}): "
            "check --data and the list"
        )
    if not wanted:
        raise UserError(f"--subset-file {path} lists no images")
    return np.unique(np.asarray(wanted, dtype=np.int64))


def subset_listing(images: ImageList, indices: np.ndarray) -> str:
    """The subset as the text of a list file (one relative path per line), which --subset-file reads back."""
    return "".join(f"{Path(images.paths[i]).relative_to(images.root)}\n" for i in indices)
