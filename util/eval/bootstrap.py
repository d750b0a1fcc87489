"""Bootstrap intervals over the test images, and the paired difference against the random-init network.

Every evaluation scores its networks on the same test images, in the same order. The 95 % percentile bootstrap draws
RESAMPLES sets of as many test images, with replacement, from the run's --seed, and recomputes each number on every
set: a top-1 / top-5 accuracy from the per-image hits, a VOC mAP from the per-image SVM scores (util/eval/svm.py's
all-point AP). Every number of an evaluation is recomputed on the same sets, so the differences are paired: KEY_gain,
the pretrained network minus the random-init network (the higher of its two BatchNorm statistics for that key, on
all the test images), and KEY_gain_pixels, minus the pixel baseline; an interval that leaves out 0 says the gain is
larger than the choice of test images explains. No interval says anything about the spread over training seeds
(report.py's rows over seeds do).

Where a protocol picks what it reports on the test images themselves (the AvgPool probe's best epoch, the
semi-supervised best epoch, the SVM's best layer), the pick is made again on every resampled set from the hits or
scores of every candidate. The interval then includes the variability that the pick adds (a different epoch or
layer may win on another set of test images), so it is wider than the interval of one fixed candidate. It does not
remove the pick's optimistic bias: the reported number is still the maximum over candidates scored on the same
images it is reported on, and so is every resampled value; an unbiased number needs a pick on held-out images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np

from util.eval.pretrained import NETWORK_PREFIXES, RANDOM_NETWORKS, network_of
from util.eval.svm import voc_ap_columns
from util.seeds import derive_seed

logger = logging.getLogger("deepcluster")

RESAMPLES = 1000
LEVEL = 95.0  # percent: the interval runs from the 2.5th to the 97.5th percentile of the resampled numbers
CHUNK = 50  # resamples drawn at once: (CHUNK, N) indices in memory
METHOD = {
    "unit": "test image",
    "resamples": RESAMPLES,
    "interval": f"percentile, {LEVEL:g} %",
    "gain": "pretrained minus the higher of the random-init network's two BatchNorm variants on the same resamples "
    "(paired)",
    "gain_pixels": "pretrained minus the pixel baseline on the same resamples (paired)",
}

# statistic(indices (c, N)) -> (c,) the number, in percent, on each of c resampled sets of test images
Statistic = Callable[[np.ndarray], np.ndarray]


def resample_indices(n: int, seed: int, resamples: int = RESAMPLES) -> Iterator[np.ndarray]:
    """The resampled sets, CHUNK at a time: (c, n) indices into the test images, drawn with replacement."""
    rng = np.random.default_rng(derive_seed(seed, "bootstrap", 0))
    for start in range(0, resamples, CHUNK):
        yield rng.integers(0, n, size=(min(CHUNK, resamples - start), n))


def multiplicities(idx: np.ndarray, n: int) -> np.ndarray:
    """(c, n): how many times each test image is drawn in each of the c resampled sets."""
    c = len(idx)
    flat = (np.arange(c)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=c * n).reshape(c, n).astype(np.float64)


def accuracy_statistic(hits: np.ndarray, select: np.ndarray | None = None) -> Statistic:
    """100 * the share of hits on each resampled set. hits: bool (N,), or (E, N) for E candidates (epochs) of which
    the protocol reports the one with the most `select` hits (E, N) (the first of equals; default: hits itself),
    picked again on each set. Counts are exact integers, so ties are ties."""
    values = np.atleast_2d(np.asarray(hits, dtype=np.float64))
    chooser = values if select is None else np.atleast_2d(np.asarray(select, dtype=np.float64))
    n = values.shape[1]

    def statistic(idx: np.ndarray) -> np.ndarray:
        drawn = multiplicities(idx, n)
        counts = drawn @ values.T  # (c, E)
        pick = np.argmax(drawn @ chooser.T, axis=1) if len(values) > 1 else np.zeros(len(idx), dtype=np.int64)
        return 100.0 * counts[np.arange(len(idx)), pick] / n

    return statistic


def map_statistic(scores: np.ndarray | list[np.ndarray], labels: np.ndarray) -> Statistic:
    """100 * the mean over classes of VOC AP (difficult images ignored) on each resampled set; scores (N, C), or a
    list of them (layers) of which the best mAP is reported, picked again on each set; labels (N, C). A class with
    no positive in a set is left out of that set's mean, as the full protocol leaves it out."""
    candidates = [np.asarray(s, dtype=np.float64) for s in (scores if isinstance(scores, list) else [scores])]
    labels = np.asarray(labels)

    def statistic(idx: np.ndarray) -> np.ndarray:
        return np.array(
            [max(100.0 * np.nanmean(voc_ap_columns(s[rows], labels[rows])) for s in candidates) for rows in idx]
        )

    return statistic


def hit_statistics(per_image: dict | None, prefix: str = "") -> dict[str, Statistic]:
    """The statistics of an evaluation task's kept hits: per_image = {"hits": {key: (N,) or (E, N)}, "select": the
    key whose hits pick the reported candidate, or None}; keys prefixed with the network's (NETWORK_PREFIXES).
    None, or a layout this code did not write: no statistic (warn_without_interval says so)."""
    if not isinstance(per_image, dict) or not isinstance(per_image.get("hits"), dict):
        return {}
    hits, select = per_image["hits"], per_image.get("select")
    return {prefix + key: accuracy_statistic(h, hits[select] if select else None) for key, h in hits.items()}


def warn_without_interval(results: dict, statistics: dict, keys: list[str]) -> list[str]:
    """Log, and return, the reported keys (of any network) that have a number but nothing to resample: results reused
    from an evaluation state kept before per-image hits were."""
    names = [prefix + key for key in keys for prefix in NETWORK_PREFIXES.values()]
    missing = [name for name in names if isinstance(results.get(name), float) and name not in statistics]
    for name in missing:
        logger.warning("%s: reused from a state without per-image hits, no bootstrap interval", name)
    return missing


def resampled(statistic: Statistic, n: int, seed: int, resamples: int = RESAMPLES) -> np.ndarray:
    """The statistic on every resampled set (resamples,)."""
    return np.concatenate([statistic(idx) for idx in resample_indices(n, seed, resamples)])


def percentile_interval(samples: np.ndarray) -> list[float]:
    low, high = np.percentile(samples, [(100 - LEVEL) / 2, 100 - (100 - LEVEL) / 2])
    return [float(low), float(high)]


def add_intervals(
    results: dict, statistics: dict[str, Statistic], n: int, seed: int, resamples: int = RESAMPLES
) -> dict:
    """For every results key in `statistics` (any network's, prefixed): KEY_ci95 = [low, high]; for every pretrained
    key with a baseline's key beside it: KEY_gain, the difference with the random-init network whose number is the
    higher of its two BatchNorm variants (the first of equals; KEY_gain_over names it), and KEY_gain_pixels with the
    pixels, each with its paired interval (KEY_gain_ci95, KEY_gain_pixels_ci95). Returns the new keys."""
    samples = {key: resampled(statistic, n, seed, resamples) for key, statistic in statistics.items()}
    added: dict = {f"{key}_ci95": percentile_interval(values) for key, values in samples.items()}
    for key, values in samples.items():
        if network_of(key)[0] != "pretrained":
            continue
        randoms = [NETWORK_PREFIXES[network] + key for network in RANDOM_NETWORKS]
        randoms = [name for name in randoms if name in samples]
        if randoms:
            base = max(randoms, key=lambda name: results[name])  # max keeps the first of equals: initial BatchNorm
            added[f"{key}_gain"] = float(results[key] - results[base])
            added[f"{key}_gain_ci95"] = percentile_interval(values - samples[base])
            added[f"{key}_gain_over"] = network_of(base)[0]
        pixels = NETWORK_PREFIXES["pixels"] + key
        if pixels in samples:
            added[f"{key}_gain_pixels"] = float(results[key] - results[pixels])
            added[f"{key}_gain_pixels_ci95"] = percentile_interval(values - samples[pixels])
    results.update(added)
    return added


def interval_lines(results: dict, keys: list[str]) -> list[str]:
    """One console line per key measured: the number, its interval, and the paired gains over the baselines."""
    lines = []
    for key in keys:
        for prefix in NETWORK_PREFIXES.values():
            name = prefix + key
            if f"{name}_ci95" not in results:
                continue
            low, high = results[f"{name}_ci95"]
            line = f"{name}: {results[name]:.2f} (95 % CI {low:.2f} to {high:.2f})"
            for suffix, words in (("gain", "random init"), ("gain_pixels", "the pixels")):
                if f"{name}_{suffix}" in results:
                    gain, (g_low, g_high) = results[f"{name}_{suffix}"], results[f"{name}_{suffix}_ci95"]
                    line += f"; gain over {words} {gain:+.2f} (95 % CI {g_low:+.2f} to {g_high:+.2f})"
            lines.append(line)
    return lines
