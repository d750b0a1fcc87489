"""Linear SVMs of the VOC07 benchmark (Goyal et al. 2019): AP, two solvers, the full and low-shot protocols.

Every SVM is the L2-regularised squared-hinge problem of liblinear with a regularised bias (intercept scaling 1):
    min_w  1/2 |w|^2 + C sum_i s_i max(0, 1 - y_i (w . x_i + b))^2,   s_i = 2 for positives, 1 for negatives.
`liblinear` solves one problem at a time with scikit-learn's LinearSVC (the reference); `batched`
(util/eval/newton_svm.py) solves every (class, cost, fold or sample) problem at once in torch with Newton-CG, on the
CPU or a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from util.eval.newton_svm import POSITIVE_WEIGHT, batched_solver

logger = logging.getLogger("deepcluster")

# In the benchmark's order (mmselfsup's eval_svm_full.sh costs "1.0,10.0,100.0", then svm_helper.parse_cost_list
# appends 0.5^4 .. 0.5^19): a tie between costs goes to the one listed first, as np.argmax does there.
DEFAULT_COSTS = (1.0, 10.0, 100.0, *[2.0**-i for i in range(4, 20)])
LOWSHOT_KS = (1, 2, 4, 8, 16, 32, 64, 96)

# solver(X (N, D) float64, Y (N, P) +-1, mask (N, P) bool rows used by each problem, costs (P,)) -> (W (D, P), b (P,))
Solver = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


# --------------------------------------------------------------------------------------------------- AP
def voc_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """VOC all-point average precision (VOC2010+ devkit): area under the precision envelope.

    labels: 1 positive, -1 negative, 0 difficult (ignored). NaN when there is no positive.
    """
    keep = labels != 0
    scores, positive = np.asarray(scores, dtype=np.float64)[keep], labels[keep] > 0
    num_pos = int(positive.sum())
    if num_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(positive[order])
    fp = np.cumsum(~positive[order])
    recall = np.concatenate([[0.0], tp / num_pos, [1.0]])
    precision = np.concatenate([[0.0], tp / np.maximum(tp + fp, 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope: max precision at recall >= r
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(((recall[steps + 1] - recall[steps]) * precision[steps + 1]).sum())


def voc_ap_columns(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """voc_ap of every column at once: scores and labels (N, P) -> (P,). Difficult rows (0) count as neither
    positive nor negative, which leaves the precision at every positive as voc_ap computes it; the all-point AP is
    then the mean over the positives of the precision envelope there."""
    scores, labels = np.asarray(scores, dtype=np.float64).T, np.asarray(labels).T  # a row per column: fast sorts
    order = np.argsort(-scores, axis=1, kind="stable")
    ranked = np.take_along_axis(labels, order, 1)
    hits, misses = ranked > 0, ranked < 0
    tp, fp = np.cumsum(hits, 1), np.cumsum(misses, 1)
    precision = tp / np.maximum(tp + fp, 1)
    envelope = np.maximum.accumulate(precision[:, ::-1], 1)[:, ::-1]
    num_pos = hits.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(num_pos > 0, (envelope * hits).sum(1) / num_pos, np.nan)


def cross_validation_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """The benchmark's cross-validation score: scikit-learn's (non-interpolated) average precision, as its
    cross_val_score(..., scoring='average_precision') computes it (tied scores form one threshold; sum over
    thresholds of the recall step times the precision there); difficult training images count as negatives.
    Written out (scikit-learn's own function spends most of its time validating its inputs); tests compare the two."""
    positive = labels > 0
    num_pos = int(positive.sum())
    if num_pos == 0:
        return 0.0  # scikit-learn warns and returns 0 (-0.0) when there is no positive
    order = np.argsort(-scores, kind="mergesort")
    ranked, hits = scores[order], positive[order]
    ends = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # last index of every distinct score
    tp = np.cumsum(hits)[ends]
    precision = tp / (ends + 1)
    recall_steps = np.diff(np.r_[0, tp]) / num_pos
    return float((recall_steps * precision).sum())


def l2_normalize_features(x: np.ndarray) -> np.ndarray:
    """Protocol: float64, rows divided by (L2 norm + 1e-5)."""
    x = np.asarray(x, dtype=np.float64)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-5)


# ---------------------------------------------------------------------------------------------- solvers
def liblinear_solver(
    X: np.ndarray, Y: np.ndarray, mask: np.ndarray, costs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn LinearSVC with the protocol's settings, one problem at a time (the reference)."""
    from sklearn.svm import LinearSVC

    W = np.zeros((X.shape[1], Y.shape[1]))
    b = np.zeros(Y.shape[1])
    for p in range(Y.shape[1]):
        rows = mask[:, p]
        y = Y[rows, p]
        if (y > 0).all() or (y < 0).all():  # one class only: a constant classifier
            b[p] = y[0]
            continue
        clf = LinearSVC(
            C=float(costs[p]),
            class_weight={1: POSITIVE_WEIGHT, -1: 1.0},
            loss="squared_hinge",
            penalty="l2",
            dual=True,
            intercept_scaling=1.0,
            tol=1e-4,
            max_iter=2000,
        )
        clf.fit(X[rows], y)
        W[:, p], b[p] = clf.coef_[0], clf.intercept_[0]
    return W, b


def make_batched_solver(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Solver:
    def solve(X: np.ndarray, Y: np.ndarray, mask: np.ndarray, costs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return batched_solver(X, Y, mask, costs, torch.device(device), dtype)

    return solve


def get_solver(name: str, device: str = "cpu") -> Solver:
    return liblinear_solver if name == "liblinear" else make_batched_solver(device)


# -------------------------------------------------------------------------------------------- protocols
def stratified_folds(positive: np.ndarray, num_folds: int = 3) -> np.ndarray:
    """Fold index of every row, stratified by class and in order (scikit-learn's StratifiedKFold, no shuffle)."""
    from sklearn.model_selection import StratifiedKFold

    folds = np.zeros(len(positive), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=num_folds)
    for f, (_, held_out) in enumerate(splitter.split(np.zeros(len(positive)), positive)):
        folds[held_out] = f
    return folds


def full_protocol(
    train_x: np.ndarray,
    train_labels: np.ndarray,
    test_x: np.ndarray,
    test_labels: np.ndarray,
    costs: Sequence[float],
    solver: Solver,
    num_folds: int = 3,
) -> dict:
    """Per class: the cost of best 3-fold cross-validated AP, then train on all of train and test.

    Difficult (0) training images count as negatives; at test they are excluded. Returns mAP (%), per-class data
    and the test images' scores (N, C).
    """
    num_classes, costs = train_labels.shape[1], np.asarray(costs, dtype=np.float64)
    y_train = np.where(train_labels == 1, 1.0, -1.0)
    folds = [stratified_folds(y_train[:, c] > 0, num_folds) for c in range(num_classes)]
    # problems (fold, class, cost) in one call
    grid = [(f, c, j) for f in range(num_folds) for c in range(num_classes) for j in range(len(costs))]
    Y = np.stack([y_train[:, c] for _, c, _ in grid], 1)
    mask = np.stack([folds[c] != f for f, c, _ in grid], 1)
    W, b = solver(train_x, Y, mask, costs[[j for _, _, j in grid]])
    scores = train_x @ W + b
    cv_ap = np.zeros((num_folds, num_classes, len(costs)))
    for p, (f, c, j) in enumerate(grid):
        held = folds[c] == f
        cv_ap[f, c, j] = cross_validation_ap(scores[held, p], y_train[held, c])
    best = cv_ap.mean(0).argmax(1)  # (C,) the best cost per class; a tie goes to the first in the cost list
    W, b = solver(train_x, y_train, np.ones_like(y_train, dtype=bool), costs[best])
    test_scores = test_x @ W + b
    test_ap = voc_ap_columns(test_scores, test_labels)
    map_ = 100 * float(np.nanmean(test_ap))
    return {"map": map_, "ap": (100 * test_ap).tolist(), "cost": costs[best].tolist(), "scores": test_scores}


def lowshot_sample(labels: np.ndarray, cls: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """k positives and (C - 1) k negatives of class `cls` (difficult images excluded); fewer when not available."""
    positives, negatives = np.flatnonzero(labels[:, cls] == 1), np.flatnonzero(labels[:, cls] == -1)
    num_neg = (labels.shape[1] - 1) * k
    chosen_pos = rng.choice(positives, min(k, len(positives)), replace=False)
    chosen_neg = rng.choice(negatives, min(num_neg, len(negatives)), replace=False)
    return np.concatenate([chosen_pos, chosen_neg])


@dataclass(frozen=True)
class LowShot:
    """The low-shot protocol's draws: k positives per class for each k, `samples` independent draws, from `seed`."""

    ks: Sequence[int] = LOWSHOT_KS
    samples: int = 5
    seed: int = 0


def lowshot_protocol(
    train_x: np.ndarray,
    train_labels: np.ndarray,
    test_x: np.ndarray,
    test_labels: np.ndarray,
    costs: Sequence[float],
    solver: Solver,
    draws: LowShot = LowShot(),
) -> dict:
    """For every k: `draws.samples` independent samples per class, no cross-validation, test on the full test set;
    the cost is the one of best mean test mAP over the samples (as the published numbers), reported mean and std."""
    ks, num_samples, seed = draws.ks, draws.samples, draws.seed
    num_classes, costs = train_labels.shape[1], np.asarray(costs, dtype=np.float64)
    y_train = np.where(train_labels == 1, 1.0, -1.0)
    out = {}
    for k in ks:
        grid = [(s, c, j) for s in range(num_samples) for c in range(num_classes) for j in range(len(costs))]
        samples = {
            (s, c): lowshot_sample(train_labels, c, k, np.random.default_rng([seed, k, s, c]))
            for s in range(num_samples)
            for c in range(num_classes)
        }
        rows = np.unique(np.concatenate(list(samples.values())))  # solve on the union of sampled rows only
        mask = np.zeros((len(rows), len(grid)), dtype=bool)
        for p, (s, c, _) in enumerate(grid):
            mask[np.searchsorted(rows, samples[(s, c)]), p] = True
        Y = np.stack([y_train[rows, c] for _, c, _ in grid], 1)
        W, b = solver(train_x[rows], Y, mask, costs[[j for _, _, j in grid]])
        test_scores = test_x @ W + b
        ap = voc_ap_columns(test_scores, test_labels[:, [c for _, c, _ in grid]])
        ap = ap.reshape(num_samples, num_classes, len(costs))  # grid order: sample, class, cost
        maps = 100 * np.nanmean(ap, 1)  # (samples, costs)
        best = int(maps.mean(0).argmax())
        out[k] = {"map": float(maps[:, best].mean()), "std": float(maps[:, best].std()), "cost": float(costs[best])}
    return out
