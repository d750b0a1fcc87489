"""With --deterministic, the same features give the same kNN scores to the bit while another process loads the cores."""

from __future__ import annotations

import subprocess
import sys

import torch

from util.knn import StreamingKnn
from util.runtime import seed_everything

HOG = "import numpy as np\nx = np.random.rand(1500, 1500)\nwhile True:\n    x = x @ x.T / 1500\n"


def knn_scores(test: torch.Tensor, train: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    knn = StreamingKnn(test, 10, k=20, temperature=0.07)
    for start in range(0, len(train), 3000):  # the monitor's way: training rows streamed in batches
        knn.update(train[start : start + 3000], labels[start : start + 3000])
    return knn.scores()


def test_knn_scores_are_bit_identical_under_a_competing_load():
    seed_everything(0, deterministic=True)
    gen = torch.Generator().manual_seed(0)
    test, train = torch.randn(2000, 512, generator=gen), torch.randn(12000, 512, generator=gen)
    labels = torch.randint(0, 10, (12000,), generator=gen)
    alone = knn_scores(test, train, labels)
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(2)]
    try:
        loaded = [knn_scores(test, train, labels) for _ in range(3)]
    finally:
        for hog in hogs:
            hog.kill()
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(alone, scores) for scores in loaded)
