"""Bootstrap intervals over the test images, and the paired difference against the random-init network.

Every evaluation scores its networks on the same test images, in the same order. The 95 % percentile bootstrap draws
RESAMPLES sets of as many test images, with replacement, from the run's --seed, and recomputes each number on every
set: a top-1 / top-5 accuracy from the per-image hits, a VOC mAP from the per-image SVM scores (util/eval/svm.py's
all-point AP). Every number of an evaluation is recomputed on the same sets, so the difference `pretrained - random
init` is paired: its interval leaves out 0 when the gain is larger than the choice of test images explains. Neither
interval says anything about the spread over training seeds (report.py's rows over seeds do).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from util.eval.svm import voc_ap_columns
from util.seeds import derive_seed

RESAMPLES = 1000
LEVEL = 95.0  # percent: the interval runs from the 2.5th to the 97.5th percentile of the resampled numbers
CHUNK = 50  # resamples drawn at once: (CHUNK, N) indices in memory
RANDOM_PREFIX = "random_init_"
METHOD = {
    "unit": "test image",
    "resamples": RESAMPLES,
    "interval": f"percentile, {LEVEL:g} %",
    "gain": "pretrained minus random init on the same resamples (paired)",
}

# statistic(indices (c, N)) -> (c,) the number, in percent, on each of c resampled sets of test images
Statistic = Callable[[np.ndarray], np.ndarray]


def resample_indices(n: int, seed: int, resamples: int = RESAMPLES) -> Iterator[np.ndarray]:
    """The resampled sets, CHUNK at a time: (c, n) indices into the test images, drawn with replacement."""
    rng = np.random.default_rng(derive_seed(seed, "bootstrap", 0))
    for start in range(0, resamples, CHUNK):
        yield rng.integers(0, n, size=(min(CHUNK, resamples - start), n))


def accuracy_statistic(hits: np.ndarray) -> Statistic:
    """100 * the mean of per-image hits (bool (N,)) on each resampled set."""
    values = np.asarray(hits, dtype=np.float64)
    return lambda idx: 100.0 * values[idx].mean(1)


def map_statistic(scores: np.ndarray, labels: np.ndarray) -> Statistic:
    """100 * the mean over classes of VOC AP (difficult images ignored) on each resampled set; scores and labels
    (N, C). A class with no positive in a set is left out of that set's mean, as the full protocol leaves it out."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)

    def statistic(idx: np.ndarray) -> np.ndarray:
        return np.array([100.0 * np.nanmean(voc_ap_columns(scores[rows], labels[rows])) for rows in idx])

    return statistic


def resampled(statistic: Statistic, n: int, seed: int, resamples: int = RESAMPLES) -> np.ndarray:
    """The statistic on every resampled set (resamples,)."""
    return np.concatenate([statistic(idx) for idx in resample_indices(n, seed, resamples)])


def percentile_interval(samples: np.ndarray) -> list[float]:
    low, high = np.percentile(samples, [(100 - LEVEL) / 2, 100 - (100 - LEVEL) / 2])
    return [float(low), float(high)]


def add_intervals(
    results: dict, statistics: dict[str, Statistic], n: int, seed: int, resamples: int = RESAMPLES
) -> dict:
    """For every results key in `statistics` (the pretrained network's keys, and the random network's under
    RANDOM_PREFIX): KEY_ci95 = [low, high]; for every pretrained key whose random-init key is there too:
    KEY_gain (the difference of the two numbers) and KEY_gain_ci95 (its paired interval). Returns the new keys."""
    samples = {key: resampled(statistic, n, seed, resamples) for key, statistic in statistics.items()}
    added: dict = {f"{key}_ci95": percentile_interval(values) for key, values in samples.items()}
    for key, values in samples.items():
        base = RANDOM_PREFIX + key
        if key.startswith(RANDOM_PREFIX) or base not in samples:
            continue
        added[f"{key}_gain"] = float(results[key] - results[base])
        added[f"{key}_gain_ci95"] = percentile_interval(values - samples[base])
    results.update(added)
    return added


def interval_lines(results: dict, keys: list[str]) -> list[str]:
    """One console line per key measured: the number, its interval, and the paired gain over the random network."""
    lines = []
    for key in keys:
        for name in (key, RANDOM_PREFIX + key):
            if f"{name}_ci95" not in results:
                continue
            low, high = results[f"{name}_ci95"]
            line = f"{name}: {results[name]:.2f} (95 % CI {low:.2f} to {high:.2f})"
            if f"{name}_gain" in results:
                gain, (g_low, g_high) = results[f"{name}_gain"], results[f"{name}_gain_ci95"]
                line += f"; gain over random init {gain:+.2f} (95 % CI {g_low:+.2f} to {g_high:+.2f})"
            lines.append(line)
    return lines
