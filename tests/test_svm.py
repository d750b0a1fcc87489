"""SVM benchmark pieces: AP, solvers, low-shot sampling, VOC parsing, and eval_svm.py end to end."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torchvision
from sklearn.metrics import average_precision_score

from tests.helpers import make_voc, random_resnet18, run_script
from util.errors import UserError
from util.eval import newton_svm
from util.eval.svm import (
    DEFAULT_COSTS,
    LowShot,
    full_protocol,
    get_solver,
    l2_normalize_features,
    lowshot_protocol,
    lowshot_sample,
    voc_ap,
)
from util.eval.voc import voc_split


def test_voc_ap_hand_computed():
    # ranking: + - + - (two positives): precision at the hits 1/1 and 2/3, recall steps 0.5 each.
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    labels = np.array([1, -1, 1, -1])
    assert voc_ap(scores, labels) == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    # the envelope: + - - + + ranks precision 1, 2/4, 3/5 -> envelope 1, 3/5, 3/5
    scores = np.array([5, 4, 3, 2, 1.0])
    labels = np.array([1, -1, -1, 1, 1])
    assert voc_ap(scores, labels) == pytest.approx((1 + 0.6 + 0.6) / 3)


def test_voc_ap_ignores_difficult_and_agrees_with_sklearn_when_precision_is_monotone():
    scores = np.array([0.9, 0.85, 0.8, 0.3, 0.2])
    labels = np.array([1, 0, 1, -1, -1])  # the difficult image ranked 2nd is ignored
    assert voc_ap(scores, labels) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    scores = rng.normal(size=200)
    labels = np.where(scores > 0.5, 1, -1)  # perfectly separable: both are 1
    assert voc_ap(scores, labels) == pytest.approx(average_precision_score(labels > 0, scores))
    labels = np.where(rng.random(200) < 0.3, 1, -1)
    assert voc_ap(scores, labels) >= average_precision_score(labels > 0, scores) - 1e-12  # envelope >= steps
    assert np.isnan(voc_ap(scores, -np.ones(200)))


def blobs(num=300, dim=600, classes=4, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, dim))
    y = rng.integers(0, classes, num)
    x = l2_normalize_features(centers[y] * 0.2 + spread * rng.normal(size=(num, dim)))
    labels = -np.ones((num, classes), dtype=np.int8)
    labels[np.arange(num), y] = 1
    return x, labels


@pytest.mark.parametrize("dim", [100, 600])  # N > D and N < D (row-space reduction)
def test_batched_solver_matches_liblinear_objective(dim):
    x, labels = blobs(dim=dim)
    y = np.where(labels == 1, 1.0, -1.0)
    costs = np.array([0.01, 1.0, 10.0, 100.0]).repeat(y.shape[1])
    y_all = np.tile(y, (1, 4))
    mask = np.ones_like(y_all, dtype=bool)
    mask[:50, :] = False  # problems may use a subset of the rows
    objectives, solutions = {}, {}
    for name in ("liblinear", "batched"):
        W, b = solutions[name] = get_solver(name)(x, y_all, mask, costs)
        objectives[name] = svm_objective(x, y_all, mask, costs, W, b)
    # The guarantee: the batched solution u is certified within a relative distance DIST_TOL of the optimum u*, so
    # P(u) <= P(u*) / (1 - DIST_TOL^2), and liblinear's solution cannot beat u*: on any machine and BLAS.
    bound = distance_bound_reference(x, y_all, mask, costs, *solutions["batched"])
    assert (bound <= newton_svm.DIST_TOL).all(), bound.max()
    assert (objectives["batched"] * (1 - newton_svm.DIST_TOL**2) <= objectives["liblinear"]).all()


def distance_bound_reference(x, y, mask, costs, W, b):
    """|grad P(u)| / |u| written out problem by problem, independently of util/eval/newton_svm.py."""
    bounds = []
    for p in range(y.shape[1]):
        rows = mask[:, p]
        xp, yp = np.hstack([x[rows], np.ones((rows.sum(), 1))]), y[rows, p]
        up = np.append(W[:, p], b[p])
        cp = costs[p] * np.where(yp > 0, 2.0, 1.0)
        hinge = np.maximum(0, 1 - yp * (xp @ up))
        gradient = up - xp.T @ (2 * cp * hinge * yp)
        bounds.append(np.linalg.norm(gradient) / np.linalg.norm(up))
    return np.array(bounds)


def test_certificate_bounds_the_distance_to_the_optimum():
    """Strong convexity, checked: for any u the certificate is >= |u - u*| / |u| against a float64 optimum u*."""
    x, labels = blobs(num=120, dim=40)
    y = np.where(labels == 1, 1.0, -1.0)
    mask = np.ones_like(y, dtype=bool)
    costs = np.array([1e-5, 0.1, 10.0, 1000.0])
    y, mask = y[:, :4], mask[:, :4]
    W_opt, b_opt = newton_svm.batched_solver(x, y, mask, costs, dtype=torch.float64, tol=1e-9)
    u_opt = np.vstack([W_opt, b_opt])
    assert (newton_svm.relative_distance_bound(x, y, mask, costs, W_opt, b_opt) <= 1e-9).all()
    rng = np.random.default_rng(1)
    for scale in (1e-4, 1e-2, 1.0):
        u = u_opt + scale * np.abs(u_opt).mean(0) * rng.normal(size=u_opt.shape)
        bound = newton_svm.relative_distance_bound(x, y, mask, costs, u[:-1], u[-1])
        np.testing.assert_allclose(bound, distance_bound_reference(x, y, mask, costs, u[:-1], u[-1]), rtol=1e-9)
        truth = np.linalg.norm(u - u_opt, axis=0) / np.linalg.norm(u, axis=0)
        # |u - u*| >= |u - u_opt| - |u_opt - u*| >= |u - u_opt| - 1e-9 |u_opt|
        slack = 1e-9 * np.linalg.norm(u_opt, axis=0) / np.linalg.norm(u, axis=0)
        assert (bound >= truth - slack).all()


def test_certificate_of_problems_on_different_rows_equals_the_reference():
    """The certificate is computed row set by row set; every problem's must equal its own computation."""
    x, labels = blobs(num=150, dim=30)
    rng = np.random.default_rng(2)
    y = np.where(labels[:, rng.integers(0, labels.shape[1], 12)] == 1, 1.0, -1.0)
    mask = np.zeros_like(y, dtype=bool)
    for p in range(12):  # row sets shared by some problems, of different sizes, one empty of a class
        mask[rng.choice(150, 20 + 10 * (p // 3), replace=False), p] = True
    mask[:, 11] = mask[:, 3]
    costs, W, b = rng.uniform(0.01, 10, 12), rng.normal(size=(30, 12)), rng.normal(size=12)
    bound = newton_svm.relative_distance_bound(x, y, mask, costs, W, b)
    np.testing.assert_allclose(bound, distance_bound_reference(x, y, mask, costs, W, b), rtol=1e-9)


def test_tiny_costs_are_solved_not_left_at_zero():
    """At C = 2^-19 the objective barely depends on w; the certificate still demands the optimum's direction, the
    one every ranking (AP) depends on: near w* = 2 C sum_i s_i y_i x_i (the first Newton step from zero)."""
    x, labels = blobs(num=60, dim=30)
    y = np.where(labels == 1, 1.0, -1.0)[:, :2]
    mask = np.ones_like(y, dtype=bool)
    costs = np.full(2, 0.5**19)
    W, b = newton_svm.batched_solver(x, y, mask, costs)
    reference, _ = newton_svm.batched_solver(x, y, mask, costs, dtype=torch.float64, tol=1e-9)
    assert (np.linalg.norm(W, axis=0) > 0).all()
    cosine = (W * reference).sum(0) / np.linalg.norm(W, axis=0) / np.linalg.norm(reference, axis=0)
    # |w - w*| <= |u - u*| <= tol |u| (u = (w, b)) bounds the angle between w and w*: sin <= tol |u| / |w|
    sine = newton_svm.DIST_TOL * np.sqrt((W**2).sum(0) + b**2) / np.linalg.norm(W, axis=0) + 1e-9
    assert (sine < 0.5).all() and (cosine >= np.sqrt(1 - sine**2)).all()


def svm_objective(x, y, mask, costs, W, b):
    hinge = np.maximum(0, 1 - y * (x @ W + b)) * mask
    return 0.5 * (W**2).sum(0) + 0.5 * b**2 + costs * (np.where(y > 0, 2, 1) * hinge**2).sum(0)


def test_exact_newton_direction_solves_the_newton_system():
    rng = np.random.default_rng(0)
    z = torch.tensor(rng.normal(size=(2, 30, 20)))
    active = torch.tensor(rng.choice([0.0, 1.0, 2.0], size=(2, 30, 3)))  # s on active rows, 0 elsewhere
    two_c = torch.tensor(rng.uniform(0.1, 50, size=(2, 1, 3)))
    grad = torch.tensor(rng.normal(size=(2, 20, 3)))
    zt = z.transpose(1, 2)
    direction = newton_svm.exact_newton_direction(z @ zt, z, zt, active, two_c, grad).numpy()
    for g in range(2):
        for p in range(3):
            zg = z[g].numpy()
            hessian = np.eye(20) + zg.T @ np.diag(two_c[g, 0, p].item() * active[g, :, p].numpy()) @ zg
            np.testing.assert_allclose(hessian @ direction[g, :, p], -grad[g, :, p].numpy(), atol=1e-8)


@pytest.mark.parametrize("exact", [True, False])
def test_newton_directions_exact_or_by_cg_reach_the_same_optimum(monkeypatch, exact):
    x, labels = blobs(num=200, dim=300)
    y = np.tile(np.where(labels == 1, 1.0, -1.0), (1, 3))
    costs = np.array([0.01, 1.0, 100.0]).repeat(labels.shape[1])
    mask = np.ones_like(y, dtype=bool)
    reference = svm_objective(x, y, mask, costs, *newton_svm.batched_solver(x, y, mask, costs, dtype=torch.float64))
    monkeypatch.setattr(newton_svm, "_exact_is_cheaper", lambda *args: exact)
    W, b = newton_svm.batched_solver(x, y, mask, costs)
    assert_same_optimum(svm_objective(x, y, mask, costs, W, b), reference)


def assert_same_optimum(a, b):
    """Two solutions each certified within a relative distance DIST_TOL of the optimum u*: their objectives are both
    in [P(u*), P(u*) / (1 - DIST_TOL^2)]."""
    bound = newton_svm.DIST_TOL**2 / (1 - newton_svm.DIST_TOL**2)
    assert (np.abs(a - b) <= np.minimum(a, b) * bound).all(), np.max(np.abs(a - b) / np.minimum(a, b))


def test_float64_finish_certifies_from_any_float32_start(monkeypatch, caplog):
    """Whatever the float32 run returns (here: a perturbed, far from optimal answer for every problem), the
    float64 finish started from it must certify every problem, at a distance (1e-9) float32 cannot reach."""
    x, labels = blobs(num=200, dim=300)
    y = np.tile(np.where(labels == 1, 1.0, -1.0), (1, 2))
    costs = np.array([1.0, 100.0]).repeat(labels.shape[1])
    mask = np.ones_like(y, dtype=bool)
    solve, dtypes = newton_svm._solve, []

    def float32_gone_wrong(X, problems, device, newton, *args):
        dtypes.append(newton.dtype)
        W, b = solve(X, problems, device, newton, *args)
        if newton.dtype == torch.float32:
            return W + np.random.default_rng(0).normal(size=W.shape), b + 1.0
        return W, b

    starts = []
    newton = newton_svm.newton_cg

    def recording_newton(z, y, s, c, tol, max_newton, w0=None):
        starts.append(None if w0 is None else w0.clone())
        return newton(z, y, s, c, tol, max_newton, w0)

    monkeypatch.setattr(newton_svm, "_solve", float32_gone_wrong)
    monkeypatch.setattr(newton_svm, "newton_cg", recording_newton)
    with caplog.at_level("WARNING", logger="deepcluster"):
        W, b = newton_svm.batched_solver(x, y, mask, costs, tol=1e-9)
    assert dtypes == [torch.float32, torch.float64]
    assert starts[0].abs().max() == 0 and starts[-1].dtype == torch.float64 and starts[-1].abs().max() > 0.5
    assert "not certified" not in caplog.text
    assert (distance_bound_reference(x, y, mask, costs, W, b) <= 1e-9).all()


def test_small_row_sets_get_their_own_coordinates_with_the_same_solutions(monkeypatch):
    x, labels = blobs(num=300, dim=400)
    y_all = np.where(labels == 1, 1.0, -1.0)
    rng = np.random.default_rng(1)
    # 6 problems on 3 small row sets (2 costs each), as the low-shot protocol poses them
    row_sets = [rng.choice(300, 40, replace=False) for _ in range(3)]
    mask = np.zeros((300, 6), dtype=bool)
    for p in range(6):
        mask[row_sets[p // 2], p] = True
    y = y_all[:, [0, 0, 1, 1, 2, 2]]
    costs = np.array([0.1, 10.0] * 3)
    groups, own = newton_svm.plan_groups(mask, 401)
    assert len(groups) == 3 and own  # one group per row set, each in its own coordinates
    groups, own = newton_svm.plan_groups(mask, 41)  # row sets not small against the dimension: the union's rows
    assert len(groups) == 1 and not own and (groups[0][0] == np.flatnonzero(mask.any(1))).all()
    assert len(newton_svm.plan_groups(np.ones((300, 6), dtype=bool), 401)[0]) == 1
    shared = np.ones(300, dtype=bool)  # the float64 finish of a shared run: the run's rows, whatever the problems'
    assert (newton_svm.plan_groups(mask, 401, shared)[0][0][0] == np.arange(300)).all()
    W, b = newton_svm.batched_solver(x, y, mask, costs)
    for p in range(6):  # each problem alone
        Wp, bp = newton_svm.batched_solver(x, y[:, [p]], mask[:, [p]], costs[[p]])
        assert_same_optimum(
            svm_objective(x, y[:, p], mask[:, p], costs[p], W[:, p], b[p]),
            svm_objective(x, y[:, [p]], mask[:, [p]], costs[[p]], Wp, bp)[0],
        )
    monkeypatch.setattr(newton_svm, "GROUP_ELEMENTS", 1)  # one group at a time: the same solutions
    W1, b1 = newton_svm.batched_solver(x, y, mask, costs)
    assert_same_optimum(svm_objective(x, y, mask, costs, W1, b1), svm_objective(x, y, mask, costs, W, b))


def test_float64_finish_of_small_row_sets_stays_in_their_own_coordinates(monkeypatch):
    """A problem of a run whose row sets had their own coordinates is finished in its own (small) row space, not in
    that of every row (which costs an eigendecomposition of the union)."""
    x, labels = blobs(num=300, dim=400)
    rng = np.random.default_rng(1)
    mask = np.zeros((300, 4), dtype=bool)
    for p in range(4):
        mask[rng.choice(300, 40, replace=False), p] = True
    y, costs = np.where(labels[:, :4] == 1, 1.0, -1.0), np.array([0.1, 1.0, 10.0, 100.0])
    solve, sizes = newton_svm._solve, {}
    coordinates = newton_svm.principal_coordinates

    def float32_off_for_one(X, problems, device, newton, *args, **kwargs):
        W, b = solve(X, problems, device, newton, *args, **kwargs)
        if newton.dtype == torch.float32:
            W[:, 2] += 1.0  # far from the optimum: this one is finished in float64
        return W, b

    def recording(x):
        sizes[len(sizes)] = tuple(x.shape)
        return coordinates(x)

    monkeypatch.setattr(newton_svm, "_solve", float32_off_for_one)
    monkeypatch.setattr(newton_svm, "principal_coordinates", recording)
    monkeypatch.setattr(newton_svm, "_LAST_COORDINATES", {})  # nothing cached by an earlier test
    W, b = newton_svm.batched_solver(x, y, mask, costs)
    assert list(sizes.values()) == [(4, 40, 401), (1, 40, 401)]  # the run, then the finish of problem 2 alone
    assert (distance_bound_reference(x, y, mask, costs, W, b) <= newton_svm.DIST_TOL).all()


def test_full_protocol_both_solvers_agree():
    features, labels = blobs(num=440, spread=2.0)
    train = (features[:240], labels[:240])
    test = (features[240:], labels[240:])
    costs = [0.1, 1.0, 10.0]
    maps = [full_protocol(*train, *test, costs, get_solver(n))["map"] for n in ("liblinear", "batched")]
    assert abs(maps[0] - maps[1]) <= 0.3
    assert maps[0] > 50  # the blobs are learnable


def test_lowshot_sampling_counts_and_reproducibility():
    labels = -np.ones((400, 5), dtype=np.int8)
    labels[np.arange(400), np.arange(400) % 5] = 1
    labels[0, 0] = 0  # a difficult image is never drawn
    for k in (1, 4, 16):
        rows = lowshot_sample(labels, 2, k, np.random.default_rng([0, k]))
        assert (labels[rows, 2] == 1).sum() == k and (labels[rows, 2] == -1).sum() == 4 * k
        again = lowshot_sample(labels, 2, k, np.random.default_rng([0, k]))
        np.testing.assert_array_equal(rows, again)
        assert 0 not in lowshot_sample(labels, 0, k, np.random.default_rng(1))


def mean_difference_solver(x, y, mask, costs):
    """A deterministic stand-in for an SVM solver, problem by problem (columns of y): w = mean of the positive rows -
    cost x mean of the negative rows, b = 0. The same rows in the same order give the same bits, batched or alone."""
    w = np.zeros((x.shape[1], y.shape[1]))
    for p in range(y.shape[1]):
        rows = np.flatnonzero(mask[:, p])
        pos, neg = rows[y[rows, p] > 0], rows[y[rows, p] < 0]
        w[:, p] = x[pos].mean(0) - costs[p] * x[neg].mean(0)
    return w, np.zeros(y.shape[1])


def test_lowshot_protocol_samples_picks_the_cost_and_reports_mean_and_std():
    """Against a loop written out here: for every k and sample, each class's k positives and negatives solved alone
    (on its rows in increasing order, as the protocol's union of rows holds them), AP per class with voc_ap, the
    cost of the best mean mAP over the samples, and the mean and standard deviation at that cost."""
    x, labels = blobs(num=300, spread=1.5)
    costs = (0.1, 1.0, 3.0)
    draws = LowShot(ks=(1, 4), samples=3)
    result = lowshot_protocol(x[:200], labels[:200], x[200:], labels[200:], costs, mean_difference_solver, draws)
    assert set(result) == {1, 4}
    y = np.where(labels[:200] == 1, 1.0, -1.0)
    for k in (1, 4):
        maps = np.zeros((3, len(costs)))
        for sample in range(3):
            for j, cost in enumerate(costs):
                aps = []
                for c in range(labels.shape[1]):
                    rows = np.sort(lowshot_sample(labels[:200], c, k, np.random.default_rng([0, k, sample, c])))
                    w, b = mean_difference_solver(x[rows], y[rows, c : c + 1], np.ones((len(rows), 1), bool), [cost])
                    aps.append(voc_ap(x[200:] @ w[:, 0] + b[0], labels[200:, c]))
                maps[sample, j] = 100 * np.nanmean(aps)
        best = int(maps.mean(0).argmax())
        assert result[k]["cost"] == costs[best]  # the APs are bit-identical; means differ only in summation order
        assert result[k]["map"] == pytest.approx(maps[:, best].mean(), rel=1e-12)
        assert result[k]["std"] == pytest.approx(maps[:, best].std(), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("per_class_files", [True, False])
def test_voc_parsing_with_difficult_flags(tmp_path, per_class_files):
    root = make_voc(tmp_path / "VOC2007", per_class_files)
    split = voc_split(root, "trainval")
    assert split.labels.shape == (12, 20)
    assert split.labels[0, 0] == 1 and split.labels[0, 1] == -1
    assert split.labels[4, 1] == 0  # image 4: class 1, difficult
    assert (split.labels[:, 3:] == -1).all()


def test_voc_bad_inputs(tmp_path):
    root = make_voc(tmp_path / "VOC2007")
    (root / "ImageSets" / "Main" / "aeroplane_test.txt").rename(root / "ImageSets" / "Main" / "plane_test.txt")
    with pytest.raises(UserError, match="missing: aeroplane; unknown: plane"):
        voc_split(root, "test")
    (root / "ImageSets" / "Main" / "test.txt").unlink()
    with pytest.raises(UserError, match="test.txt is missing"):
        voc_split(root, "test")


@pytest.mark.slow
def test_eval_svm_on_a_voc_layout_end_to_end(tmp_path):
    root = make_voc(tmp_path / "VOC2007", num_train=30, num_test=15)
    out = tmp_path / "svm"
    args = [
        *"--pretrained random --arch resnet18 --data".split(),
        str(root),
        *"--image-size 64 --workers 0 --costs 0.1,1 --lowshot-ks 1,2 --lowshot-samples 2 --output-dir".split(),
        str(out),
    ]
    proc = run_script("eval_svm.py", args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["random_init_best_layer"] in [f"feature{i}" for i in range(1, 6)]
    for key in ["feature1_map", "feature5_map", "best_map", "lowshot_k1_map", "lowshot_k2_map"]:
        assert 0 <= results["random_init_" + key] <= 100
    assert len(list((out / "features").glob("random_init-*.npy"))) == 10  # cached: 5 layers x 2 splits
    again = run_script("eval_svm.py", [*args, "--solver", "liblinear", "--protocol", "full"], tmp_path)
    assert again.returncode == 0 and "using cached random_init features" in again.stderr
    assert "Best Layer" in again.stderr


@pytest.mark.slow
def test_eval_svm_cifar_style_folder_and_errors(tmp_path, tiny_split_folder):
    out = tmp_path / "svm"
    args = [
        *random_resnet18(tiny_split_folder),
        "--workers",
        "0",
        "--image-size",
        "32",
        "--layers",
        "feature4,feature5",
        "--costs",
        "1",
        "--protocol",
        "full",
    ]
    proc = run_script("eval_svm.py", [*args, "--output-dir", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["random_init_feature5_map"] > 50  # separable generated classes, one-vs-rest
    low, high = results["random_init_best_map_ci95"]  # resampled test images: the mAP of each set
    assert 0 <= low <= high <= 100 and "best_map_gain" not in results  # --pretrained random: one network
    bad = run_script("eval_svm.py", [*args, "--layers", "feature9", "--output-dir", str(out)], tmp_path)
    assert bad.returncode == 2 and "--layers feature9 unknown" in bad.stderr
    missing = run_script("eval_svm.py", [*args, "--data", str(tmp_path / "nope"), "--output-dir", str(out)], tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_default_costs_are_the_protocol_grid():
    # mmselfsup's list order: 1, 10, 100, then 2^-4 .. 2^-19 (ties go to the first listed)
    assert DEFAULT_COSTS == (1.0, 10.0, 100.0, *[0.5**i for i in range(4, 20)])


def test_batched_solver_says_when_problems_stop_at_the_iteration_limit(caplog):
    x, labels = blobs(num=120, dim=50)
    y = np.where(labels == 1, 1.0, -1.0)
    mask = np.ones_like(y, dtype=bool)
    with caplog.at_level("WARNING", logger="deepcluster"):
        newton_svm.batched_solver(x, y, mask, np.full(y.shape[1], 100.0), max_newton=1)
    assert "stopped at 1 Newton iterations" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="deepcluster"):
        newton_svm.batched_solver(x, y, mask, np.full(y.shape[1], 100.0))
    assert "Newton iterations" not in caplog.text


def test_svm_feature_cache_is_keyed_by_the_weights_content(tmp_path, tiny_split_folder):
    """Replacing the checkpoint with other weights of the same path and mtime re-extracts the features."""
    weights = tmp_path / "w.pth"
    out = tmp_path / "svm"
    args = [
        "--pretrained",
        str(weights),
        *"--arch resnet18 --data".split(),
        str(tiny_split_folder),
        *"--workers 0 --image-size 32 --layers feature5 --costs 1 --protocol full --baseline none --output-dir".split(),
        str(out),
    ]
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    stamp = weights.stat().st_mtime_ns
    first = run_script("eval_svm.py", args, tmp_path)
    assert first.returncode == 0, first.stderr
    cached = np.load(out / "features" / "pretrained-train-feature5.npy")
    first_hash = json.loads((out / "results.json").read_text())["identities"]["pretrained"]["sha256"]
    torch.manual_seed(2)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    os.utime(weights, ns=(stamp, stamp))
    second = run_script("eval_svm.py", args, tmp_path)
    assert second.returncode == 0, second.stderr
    assert "using cached" not in second.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["identities"]["pretrained"]["sha256"] != first_hash
    assert not np.array_equal(cached, np.load(out / "features" / "pretrained-train-feature5.npy"))
    third = run_script("eval_svm.py", args, tmp_path)
    assert third.returncode == 0 and "using cached pretrained features" in third.stderr


def test_cross_validation_ap_is_sklearns_non_interpolated_ap():
    from util.eval.svm import cross_validation_ap

    scores = np.array([5, 4, 3, 2, 1.0])
    labels = np.array([1, -1, -1, 1, 1])  # difficult (0) never reaches CV: training labels are +-1 there
    assert cross_validation_ap(scores, labels) == pytest.approx(average_precision_score(labels > 0, scores))
    assert cross_validation_ap(scores, labels) < voc_ap(scores, labels)  # the envelope is higher here


@pytest.mark.parametrize("seed", range(5))
def test_cross_validation_ap_equals_sklearn_with_ties(seed):
    from util.eval.svm import cross_validation_ap

    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=300), 1)  # many tied scores
    labels = np.where(rng.random(300) < 0.2, 1, -1)
    assert cross_validation_ap(scores, labels) == pytest.approx(average_precision_score(labels > 0, scores), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_voc_ap_of_every_column_equals_voc_ap_one_by_one(seed):
    from util.eval.svm import voc_ap_columns

    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=(200, 7)), 1)  # ties
    labels = rng.choice([-1, 0, 1], p=[0.7, 0.1, 0.2], size=(200, 7))  # with difficult images
    labels[:, 6] = -1  # no positive: NaN
    expected = [voc_ap(scores[:, p], labels[:, p]) for p in range(7)]
    np.testing.assert_allclose(voc_ap_columns(scores, labels), expected, rtol=1e-12, equal_nan=True)


def test_a_damaged_svm_feature_cache_is_extracted_again(tmp_path, tiny_split_folder):
    """A cached feature file cut off (or replaced by a foreign array) under a valid key: one line saying so, the
    features extracted again, the same results."""
    out = tmp_path / "svm"
    args = ["--pretrained", "random", "--arch", "resnet18", "--data", str(tiny_split_folder), "--workers", "0"]
    args += [*"--image-size 32 --layers feature5 --costs 1 --protocol full --output-dir".split(), str(out)]
    first = run_script("eval_svm.py", args, tmp_path)
    assert first.returncode == 0, first.stderr
    expected = json.loads((out / "results.json").read_text())["random_init_feature5_map"]
    cached = out / "features" / "random_init-train-feature5.npy"
    for damage in (cached.read_bytes()[:200], None):
        if damage is None:
            np.save(cached, np.zeros((3, 7), dtype=np.float32))  # a foreign array: readable, the wrong shape
        else:
            cached.write_bytes(damage)  # cut off mid-file
        again = run_script("eval_svm.py", args, tmp_path)
        assert again.returncode == 0, again.stderr
        assert "cached random_init features" in again.stderr and "are damaged" in again.stderr
        assert json.loads((out / "results.json").read_text())["random_init_feature5_map"] == expected
        assert np.load(cached).shape[0] == len(list((tiny_split_folder / "train").rglob("*.jpg")))
