"""The published DeepCluster numbers the reports print beside ours, each with its source (repository, file, commit,
table). All are mmselfsup's DeepCluster ResNet-50 + Sobel, 200 epochs on ImageNet-1k (8 GPUs x 64), the weights
`deepcluster_r50-bb8681e2.pth` (the hash is in both model zoos below).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MMSELFSUP_PAGE = (
    "open-mmlab/mmselfsup configs/selfsup/deepcluster/README.md (branch 1.x, commit b74c3bb; master has the same "
    "numbers)"
)
OPENSELFSUP_ZOO = (
    "open-mmlab/mmselfsup docs/MODEL_ZOO.md (OpenSelfSup's model zoo, commit 0b76836), "
    "table 'ImageNet Semi-Supervised Classification'"
)
CONFIG = "deepcluster-sobel_resnet50_8xb64-steplr-200e_in1k"
LOWSHOT_KS = (1, 2, 4, 8, 16, 32, 64, 96)
PUBLISHED_LOWSHOT = (29.37, 37.99, 45.85, 55.57, 62.48, 66.15, 70.00, 71.37)


@dataclass(frozen=True)
class Published:
    table: str  # which report table: svm, linear, semisup
    data: str  # the dataset the number is on
    values: dict  # column -> value; absent columns are not published
    source: str


PUBLISHED = (
    Published(
        "svm",
        "VOC2007",
        {
            "Best Layer": "feature5",
            "SVM": 74.26,
            **dict(
                zip(
                    [f"k={k}" for k in LOWSHOT_KS],
                    (29.37, 37.99, 45.85, 55.57, 62.48, 66.15, 70.00, 71.37),
                    strict=True,
                )
            ),
        },
        f"{MMSELFSUP_PAGE}, table 'VOC SVM / Low-shot SVM' (OpenSelfSup's older zoo has 29.73 / 37.66 at k=1 / 2)",
    ),
    Published(
        "linear",
        "ImageNet",
        {
            "Feature1": 12.78,
            "Feature2": 30.81,
            "Feature3": 43.88,
            "Feature4": 57.71,
            "Feature5": 51.68,
            "AvgPool": 46.92,
        },
        f"{MMSELFSUP_PAGE}, table 'ImageNet Linear Evaluation'",
    ),
    Published(
        "linear",
        "Places205",
        {"Feature1": 18.80, "Feature2": 33.93, "Feature3": 41.44, "Feature4": 47.22, "Feature5": 42.61},
        f"{MMSELFSUP_PAGE}, table 'Places205 Linear Evaluation' (no AvgPool column)",
    ),
    Published(
        "semisup",
        "ImageNet 1%",
        {"Fine-tuned Config": "r50_lr0_01_head1_sobel (lr 0.01, head x1)", "Top-1 (%)": 33.44, "Top-5 (%)": 58.62},
        OPENSELFSUP_ZOO,
    ),
    Published(
        "semisup",
        "ImageNet 10%",
        {"Fine-tuned Config": "r50_lr0_01_head1_sobel (lr 0.01, head x1)", "Top-1 (%)": 52.94, "Top-5 (%)": 77.96},
        OPENSELFSUP_ZOO,
    ),
)
# Not published for DeepCluster on the page: iNaturalist2018 linear, kNN, detection and segmentation.


def _base(data: str) -> str:
    """A dataset name reduced for matching: its folder's name, letters and digits, lower case, no label percentage
    ("ImageNet 10%" -> "imagenet", "/datasets/VOC2007/" -> "voc2007")."""
    name = re.sub(r"\s+\d+(\.\d+)?%$", "", str(data).rstrip("/").split("/")[-1])
    return re.sub(r"[^a-z0-9]", "", name.lower())


def published_rows(table: str, datasets: list[str] | None = None) -> list[Published]:
    """The published rows of a table, only those on one of `datasets` (the runs' --data: a folder of the same name,
    ImageNet / Places205 / VOC2007); None: all of them."""
    rows = [p for p in PUBLISHED if p.table == table]
    if datasets is None:
        return rows
    ours = {_base(d) for d in datasets if d}
    return [p for p in rows if _base(p.data) in ours]
