"""Multi-label targets for the SVM benchmark: PASCAL VOC2007 (VOCdevkit layout) or a single-label ImageFolder."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from util.data import ImageList, list_images, resolve_split, subset_indices
from util.datasets import is_named
from util.errors import UserError

VOC_CLASSES = tuple(
    "aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike person pottedplant "
    "sheep sofa train tvmonitor".split()
)


@dataclass
class LabelledSplit:
    """Images and a (N, C) label matrix: 1 = present, -1 = absent, 0 = difficult (VOC's per-class file values)."""

    images: ImageList
    labels: np.ndarray  # (N, C) int8
    classes: list[str]


def is_voc(root: Path) -> bool:
    return (root / "ImageSets" / "Main").is_dir() and (root / "JPEGImages").is_dir()


def is_voc_data(data: str) -> bool:
    """--data names a VOC2007 folder (not a named dataset, not an ImageFolder)."""
    root = Path(data).expanduser()
    return not is_named(data) and root.is_dir() and is_voc(root)


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"VOC file {path} is missing: --data must be a VOC2007 folder with trainval and test sets")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def voc_split(root: Path, split: str) -> LabelledSplit:
    """A VOC2007 split (trainval or test); labels from ImageSets/Main/<class>_<split>.txt, else Annotations/*.xml."""
    main = root / "ImageSets" / "Main"
    ids = _read_ids(main / f"{split}.txt")
    present = {p.name[: -len(f"_{split}.txt")] for p in main.glob(f"*_{split}.txt")}
    if present and present != set(VOC_CLASSES):
        extra, missing = sorted(present - set(VOC_CLASSES)), sorted(set(VOC_CLASSES) - present)
        raise UserError(
            f"class files in {main} do not match the 20 VOC classes (missing: {', '.join(missing) or '-'}; "
            f"unknown: {', '.join(extra) or '-'}): use the VOC2007 devkit as distributed"
        )
    index = {image_id: i for i, image_id in enumerate(ids)}
    labels = np.full((len(ids), len(VOC_CLASSES)), -1, dtype=np.int8)
    if present:
        for c, name in enumerate(VOC_CLASSES):
            for line in (main / f"{name}_{split}.txt").read_text().splitlines():
                if line.strip():
                    image_id, value = line.split()
                    if image_id in index:
                        labels[index[image_id], c] = int(value)
    else:
        for image_id, row in index.items():
            labels[row] = _labels_from_xml(root / "Annotations" / f"{image_id}.xml")
    paths = [str(root / "JPEGImages" / f"{image_id}.jpg") for image_id in ids]
    missing_images = [p for p in paths if not os.path.isfile(p)]
    if missing_images:
        raise UserError(f"VOC image {missing_images[0]} is missing: check the JPEGImages folder")
    images = ImageList(root, paths, np.zeros(len(ids), dtype=np.int64), list(VOC_CLASSES))
    return LabelledSplit(images, labels, list(VOC_CLASSES))


def _labels_from_xml(path: Path) -> np.ndarray:
    """1 if a non-difficult object of the class is present, 0 if only difficult ones, else -1."""
    if not path.is_file():
        raise UserError(f"VOC annotation {path} is missing and there are no per-class files: check the devkit")
    row = np.full(len(VOC_CLASSES), -1, dtype=np.int8)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise UserError(f"{path} is not valid XML ({err}): restore it from the VOC2007 devkit") from err
    for obj in root.iter("object"):
        name = obj.findtext("name", "").strip()
        if name not in VOC_CLASSES:
            raise UserError(f"{path} names an unknown class {name!r}: not a VOC2007 annotation")
        c = VOC_CLASSES.index(name)
        difficult = obj.findtext("difficult", "0").strip() == "1"
        row[c] = max(row[c], 0 if difficult else 1)
    return row


def folder_split(images: ImageList) -> LabelledSplit:
    """Single-label ImageFolder as one-vs-rest multi-label targets (no difficult images)."""
    labels = -np.ones((len(images), len(images.classes)), dtype=np.int8)
    labels[np.arange(len(images)), images.targets] = 1
    return LabelledSplit(images, labels, images.classes)


def svm_splits(data: str, subset: int | None, cache_dir: Path) -> tuple[LabelledSplit, LabelledSplit]:
    """(train, test): VOC2007 trainval/test, or an ImageFolder's train/(val|test), or cifar10 train/test."""
    root = Path(data).expanduser()
    if is_voc_data(data):
        train, test = voc_split(root, "trainval"), voc_split(root, "test")
    else:
        train_root = resolve_split(data, "train", cache_dir)
        test_name = "test" if is_named(data) else next((s for s in ("val", "test") if (root / s).is_dir()), None)
        if test_name is None or train_root == root:
            raise UserError(
                f"{root} is neither a VOC2007 folder nor an ImageFolder root with train/ and val/ (or test/)"
            )
        train = folder_split(list_images(train_root))
        test = folder_split(list_images(resolve_split(data, test_name, cache_dir)))
        if train.classes != test.classes:
            raise UserError(f"train and {test_name} class folders differ: fix --data")
    if subset:
        keep = subset_indices(len(train.images), subset)
        train = LabelledSplit(train.images.subset(keep), train.labels[keep], train.classes)
    return train, test
