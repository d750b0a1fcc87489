"""The named datasets every script accepts as --data: the bundled CIFAR-10 and scikit-learn's handwritten digits.

Both become ImageFolder trees with train/ and test/ splits in the cache folder, made once and atomically, so every
code path (folders, in-memory copies, DataLoader workers) reads them exactly as it reads a user's own folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from util.errors import UserError

logger = logging.getLogger("deepcluster")

REPO_ROOT = Path(__file__).resolve().parent.parent
CIFAR10_ARCHIVE = REPO_ROOT / "data" / "cifar10-jpg.tar.gz"
DIGITS_SIZE = 32  # px: the 8 x 8 digits upscaled 4x, the CIFAR stem's input size
DIGITS_TEST = 397  # held-out images of the 1,797 (stratified, seed 0): 1,400 to train


def default_cache_dir() -> Path:
    return Path(os.environ.get("DEEPCLUSTER_CACHE", Path.home() / ".cache" / "deepcluster"))


def _publish(tmp: Path, target: Path) -> Path:
    """Move a finished tree into place; another process that got there first wins, which is fine (ours is removed)."""
    try:
        os.replace(tmp, target)
    except OSError:
        if not (target / "train").is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def unpack_cifar10(cache_dir: Path) -> Path:
    """Unpack the bundled archive once into cache_dir/cifar10-jpg (atomically: extract, then rename)."""
    target = cache_dir / "cifar10-jpg"
    if (target / "train").is_dir() and (target / "test").is_dir():
        return target
    if not CIFAR10_ARCHIVE.is_file():
        raise UserError(f"bundled archive {CIFAR10_ARCHIVE} is missing: restore it with `git checkout data/`")
    cache_dir.mkdir(parents=True, exist_ok=True)
    logger.info("unpacking %s into %s (once)", CIFAR10_ARCHIVE.name, target)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        with tarfile.open(CIFAR10_ARCHIVE) as tar:
            safe_extract(tar, Path(tmp))
        roots = [p for p in Path(tmp).rglob("train") if p.is_dir()]
        if not roots:
            raise UserError(f"{CIFAR10_ARCHIVE} holds no train/ folder: the archive is damaged")
        return _publish(roots[0].parent, target)


def safe_extract(tar: tarfile.TarFile, destination: Path) -> None:
    """Extract regular files and folders only, each inside `destination`: tarfile's "data" filter where Python has
    it (3.11.4 on), the same checks written out where it does not (Debian's 3.11.2, for example)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(destination, filter="data")
        return
    root = destination.resolve()
    members = tar.getmembers()
    for member in members:
        inside = (root / member.name).resolve()
        if not (member.isfile() or member.isdir()) or not inside.is_relative_to(root):
            raise UserError(f"{tar.name}: member {member.name!r} is not a plain file inside the archive's folder")
    tar.extractall(destination, members=members)


def digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits (8 x 8, 16 grey levels) as (N, 8, 8) uint8 in [0, 255], their labels,
    and the split: True for the DIGITS_TEST held-out images (stratified by class, seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = np.rint(digits.images / 16.0 * 255.0).astype(np.uint8)  # 0..16 -> 0..255, ink bright
    _, test_rows = train_test_split(
        np.arange(len(pixels)), test_size=DIGITS_TEST, stratify=digits.target, random_state=0
    )
    is_test = np.zeros(len(pixels), dtype=bool)
    is_test[test_rows] = True
    return pixels, digits.target.astype(np.int64), is_test


def make_digits(cache_dir: Path) -> Path:
    """scikit-learn's digits as PNG files, upscaled bilinearly to DIGITS_SIZE px: train/<digit>/ (1,400) and
    test/<digit>/ (397), made once into cache_dir/sklearn-digits-32px."""
    target = cache_dir / f"sklearn-digits-{DIGITS_SIZE}px"
    if (target / "train").is_dir() and (target / "test").is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    logger.info("writing scikit-learn's digits as %d px PNG files into %s (once)", DIGITS_SIZE, target)
    pixels, labels, is_test = digits_arrays()
    tmp = Path(tempfile.mkdtemp(dir=cache_dir))
    for index, (image, label, test) in enumerate(zip(pixels, labels, is_test, strict=True)):
        folder = tmp / ("test" if test else "train") / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        big = Image.fromarray(image).resize((DIGITS_SIZE, DIGITS_SIZE), Image.Resampling.BILINEAR)
        big.save(folder / f"{index:04d}.png")
    return _publish(tmp, target)


# name -> (maker of the tree with train/ and test/, the images' stored size in px)
NAMED_DATASETS: dict[str, tuple[Callable[[Path], Path], int]] = {
    "cifar10": (unpack_cifar10, 32),
    "sklearn-digits": (make_digits, DIGITS_SIZE),
}


def is_named(data: str) -> bool:
    return data in NAMED_DATASETS


def named_image_size(data: str) -> int:
    return NAMED_DATASETS[data][1]


def named_root(data: str, cache_dir: Path) -> Path:
    """The folder of a named dataset, made on first use."""
    return NAMED_DATASETS[data][0](cache_dir)
