from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import make_image_folder

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 30 JPEGs of 32 px: an ImageFolder tree the scripts train on in seconds."""
    return make_image_folder(tmp_path_factory.mktemp("tiny") / "train", num_classes=3, per_class=30)


@pytest.fixture(scope="session")
def tiny_split_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder root with train/ and val/ (4 classes), for the evaluation scripts."""
    root = tmp_path_factory.mktemp("tiny_split")
    make_image_folder(root / "train", num_classes=4, per_class=40, seed=1)
    make_image_folder(root / "val", num_classes=4, per_class=15, seed=2)
    return root


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data cache holding scikit-learn's digits as PNG files (`--data sklearn-digits --data-cache DIR`): real
    images on which the random network, the pixels and a trained network score apart and below 100 %."""
    from util.datasets import make_digits

    cache = tmp_path_factory.mktemp("digits-cache")
    make_digits(cache)
    return cache
