"""The batched SVM solver: every (class, cost, fold or sample) problem at once, in torch, on the CPU or a GPU.

Each problem is liblinear's L2-regularised squared-hinge SVM with a regularised bias (intercept scaling 1):
    min_w  1/2 |w|^2 + C sum_i s_i max(0, 1 - y_i (w . x_i + b))^2,   s_i = 2 for positives, 1 for negatives,
over the rows of its mask. It is solved by Newton's method with an exact line search: the Newton directions come
from Jacobi-preconditioned conjugate gradients in principal coordinates (truncated Newton, as liblinear's TRON)
while that is cheap, and from a Cholesky factorisation of the active rows' kernel (the finite Newton method) for the
last, slow problems, typically those of the largest costs. Measured against liblinear in benchmarks/svm_solvers.py.

The guarantee, on every machine: every returned solution u = (w, b) is within a relative distance DIST_TOL of its
problem's optimum u*, |u - u*| <= DIST_TOL |u|, certified in float64: the objective is 1-strongly convex (its
regulariser is 1/2 |u|^2), so |u - u*| <= |grad P(u)|, and the certificate is |grad P(u)| / |u|. This bounds what
the rankings (the APs) depend on, the direction of w, at every cost; it also bounds the objective, P(u) - P(u*) <=
|grad P(u)|^2 / 2 <= DIST_TOL^2 P(u) (that is the duality gap at the dual point alpha_i = 2 C s_i max(0, 1 - y_i
f(x_i))), so no other solver, liblinear included, finds an objective lower by more than a factor 1 - DIST_TOL^2. (A
bound relative to the objective alone would not do: at the smallest costs the objective is nearly C times the
weighted count of rows whatever w is, and w = 0, which ranks nothing, already meets a relative gap of 1e-4.)
The float32 run stops on the certificate as it computes it; problems whose float64 certificate is still above
DIST_TOL (float32 rounding limits how small the gradient can be computed, mostly at large costs) continue in
float64 from the float32 solution; a problem still above it after that is reported in a warning.

Problems are solved in groups of rows. A group's rows are rotated to principal coordinates z = x @ basis, whose
columns are orthogonal, so the diagonal of the Hessian describes it well; when a group has fewer rows than
dimensions this also reduces the problem to the span of those rows, which is exact (by the representer theorem
every optimum lies in the span of its training rows). Problems whose rows are many small different sets (the
low-shot samples) get one group each, so each is solved in its own small row space; otherwise all problems share
one group holding every row, and each problem weighs only its own rows.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger("deepcluster")

POSITIVE_WEIGHT = 2.0  # class_weight {+1: 2, -1: 1} of the protocol
SMALL_GROUP_ROWS = 512  # row sets up to this size (and half the dimension) get their own coordinates (measured)
GROUP_ELEMENTS = 2**27  # groups are solved in chunks of at most this many feature values (1 GB in float64 for
# the principal coordinates, a few times that at peak)
DIST_TOL = 1e-3  # certified relative distance of every returned solution to its optimum


@dataclass(frozen=True)
class Problems:
    """P SVM problems on the same rows X (N, D): labels Y (N, P) +-1, mask (N, P) the rows of each, costs (P,)."""

    Y: np.ndarray
    mask: np.ndarray
    costs: np.ndarray

    def columns(self, which: np.ndarray) -> Problems:
        return Problems(self.Y[:, which], self.mask[:, which], self.costs[which])


@dataclass(frozen=True)
class Newton:
    """How a run of Newton's method goes: its precision, its certified tolerance, its iterations at most."""

    dtype: torch.dtype
    tol: float
    max_newton: int


def batched_solver(
    X: np.ndarray,
    Y: np.ndarray,
    mask: np.ndarray,
    costs: np.ndarray,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    max_newton: int = 300,
    tol: float = DIST_TOL,
) -> tuple[np.ndarray, np.ndarray]:
    """X (N, D), Y (N, P) +-1, mask (N, P) rows of each problem, costs (P,) -> W (D, P), b (P,).

    Every problem is solved until its certified relative distance to the optimum is below tol: in `dtype` first,
    then, for the problems whose certificate computed in float64 is still above, in float64 from that solution
    (to tol / 4, which Newton's quadratic convergence makes cheap: a margin for the certificate, recomputed in the
    original coordinates), in the coordinates of the first run where those were shared."""
    device = device or torch.device("cpu")
    problems = Problems(Y, mask, costs)
    W, b = _solve(X, problems, device, Newton(dtype, tol, max_newton))
    bound = relative_distance_bound(X, Y, mask, costs, W, b)
    redo = np.flatnonzero(bound > tol)
    if redo.size and dtype != torch.float64:
        start = np.vstack([W[:, redo], b[None, redo]])
        shared = None if plan_groups(mask, X.shape[1] + 1)[1] else mask.any(1)
        finish = Newton(torch.float64, tol / 4, max_newton)
        W[:, redo], b[redo] = _solve(X, problems.columns(redo), device, finish, start, shared)
        bound[redo] = relative_distance_bound(X, Y[:, redo], mask[:, redo], costs[redo], W[:, redo], b[redo])
    if (bound > tol).any():
        logger.warning(
            "SVM solver: %d problem(s) not certified within a relative distance of %g to the optimum (worst %.2g)",
            int((bound > tol).sum()),
            tol,
            float(bound.max()),
        )
    return W, b


def objective_gradient(
    X: np.ndarray, Y: np.ndarray, mask: np.ndarray, costs: np.ndarray, W: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """grad P(u) (D + 1, P) in float64, u = (w, b), P(u) = 1/2 |u|^2 + sum_i C s_i max(0, 1 - y_i (w . x_i + b))^2,
    computed on the rows of each problem only (problems with the same rows together)."""
    X = np.asarray(X, dtype=np.float64)
    out = np.empty((X.shape[1] + 1, Y.shape[1]))
    for rows, cols in row_sets(mask):
        x, y = X[rows], Y[np.ix_(rows, cols)]
        c_i = costs[cols] * np.where(y > 0, POSITIVE_WEIGHT, 1.0)
        pull = 2 * c_i * np.maximum(0.0, 1.0 - y * (x @ W[:, cols] + b[cols])) * y
        out[:-1, cols], out[-1, cols] = W[:, cols] - x.T @ pull, b[cols] - pull.sum(0)
    return out


def relative_distance_bound(
    X: np.ndarray, Y: np.ndarray, mask: np.ndarray, costs: np.ndarray, W: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """|grad P(u)| / |u| per problem, in float64: an upper bound on |u - u*| / |u| (P is 1-strongly convex)."""
    norm = np.sqrt((W**2).sum(0) + b**2)
    gradient = np.linalg.norm(objective_gradient(X, Y, mask, costs, W, b), axis=0)
    return gradient / np.maximum(norm, np.finfo(np.float64).tiny)


def _solve(
    X, problems: Problems, device: torch.device, newton: Newton, start=None, shared_rows=None
) -> tuple[np.ndarray, np.ndarray]:
    """The Newton solve of every problem in newton's precision, from `start` ((D + 1, P), bias last) or zero:
    W (D, P), b (P,) in float64. `shared_rows` (N,) bool: the problems use the principal coordinates of these rows
    (a superset of theirs), so that the float64 finish of a few problems reuses those of the run that solved them
    all; None: as plan_groups decides."""
    x = torch.as_tensor(X, dtype=torch.float64, device=device)  # principal coordinates come from float64 data
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=device)], 1)  # the bias as a regularised feature
    out = np.zeros((x.shape[1], problems.Y.shape[1])) if start is None else np.array(start, dtype=np.float64)
    groups, own = plan_groups(problems.mask, x.shape[1], shared_rows)
    if not own:  # one group, in the (cached) coordinates of its rows
        ((rows, columns),) = groups
        z, basis = cached_principal_coordinates(x[torch.as_tensor(rows, device=device)][None])
        out[:, columns] = _solve_groups(z, basis, problems, groups, rows[None], out, newton)[0]
        return out[:-1], out[-1]
    per_chunk = max(1, GROUP_ELEMENTS // (max(len(r) for r, _ in groups) * x.shape[1]))
    for first in range(0, len(groups), per_chunk):
        chunk = groups[first : first + per_chunk]
        rows = _padded([r for r, _ in chunk])  # (G, n); -1 pads
        valid = torch.as_tensor(rows >= 0, device=device)[:, :, None]
        z, basis = principal_coordinates(x[torch.as_tensor(np.maximum(rows, 0), device=device)] * valid)
        w = _solve_groups(z, basis, problems, chunk, rows, out, newton)
        for g, (_, columns) in enumerate(chunk):
            out[:, columns] = w[g, :, : len(columns)]
    return out[:-1], out[-1]


def _solve_groups(
    z: torch.Tensor, basis: torch.Tensor, problems: Problems, groups, rows, start, newton: Newton
) -> np.ndarray:
    """The problems of the given groups, padded into (G, rows, problems) tensors and started from their columns of
    `start` (D + 1, P); z (G, n, r) their rows' coordinates, x = z @ basis^T with basis (G or 1, D + 1, r)
    orthonormal; solved in newton.dtype; w (G, D + 1, p) in float64."""
    Y, mask, costs, dtype = problems.Y, problems.mask, problems.costs, newton.dtype
    cols = _padded([c for _, c in groups])  # (G, p); -1 pads
    at = np.maximum(rows, 0)[:, :, None], np.maximum(cols, 0)[:, None, :]
    in_problem = mask[at] & (rows >= 0)[:, :, None] & (cols >= 0)[:, None, :]
    weights = in_problem * np.where(Y[at] > 0, POSITIVE_WEIGHT, 1.0)  # 0 outside the problem
    costs = np.where(cols >= 0, costs[at[1][:, 0]], 0.0)[:, None, :]  # a padding problem has cost 0: w = 0
    w0 = start[:, at[1][:, 0]].transpose(1, 0, 2) * (cols >= 0)[:, None, :]  # (G, D + 1, p)
    y, s, c = (torch.as_tensor(a, dtype=dtype, device=z.device) for a in (Y[at], weights, costs))
    w0 = (basis.transpose(1, 2) @ torch.as_tensor(w0, device=z.device)).to(dtype)  # onto the span: exact
    w = newton_cg(z.to(dtype), y, s, c, newton.tol, newton.max_newton, w0)
    return (basis @ w.double()).cpu().numpy()


_LAST_COORDINATES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def cached_principal_coordinates(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """principal_coordinates(x), remembered for the last x seen (by content): a protocol solves the same rows
    several times (cross-validation, the final fit, the float64 finish, the low-shot k whose samples cover every
    row), and the float64 eigendecomposition is the costliest step there."""
    key = (x.shape, x.device.type, hashlib.blake2b(x.cpu().numpy().tobytes(), digest_size=16).hexdigest())
    if key not in _LAST_COORDINATES:
        _LAST_COORDINATES.clear()
        _LAST_COORDINATES[key] = principal_coordinates(x)
    return _LAST_COORDINATES[key]


def row_sets(mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rows, problem columns) for every distinct row set of the mask (N, P), in order of first appearance."""
    by_rows: dict[bytes, list[int]] = {}
    for p in range(mask.shape[1]):
        by_rows.setdefault(np.packbits(mask[:, p]).tobytes(), []).append(p)
    return [(np.flatnonzero(mask[:, cols[0]]), np.asarray(cols)) for cols in by_rows.values()]


def plan_groups(
    mask: np.ndarray, dims: int, shared_rows: np.ndarray | None = None
) -> tuple[list[tuple[np.ndarray, np.ndarray]], bool]:
    """The groups, (rows, problem columns) each, and whether each group gets its own principal coordinates: one
    group per distinct row set when those are all small (also against the dimension `dims`, as each is then
    solved in its own row space) and no `shared_rows` are imposed; otherwise one group of every row of the union
    of the problems' rows (or of `shared_rows`), in its principal coordinates, each problem weighing only its own
    rows. (Groups of a few problems each on their own rows but in the union's coordinates were measured 2-4x
    slower: products with the coordinates of many few-column groups are bound by memory, not arithmetic.)"""
    groups = row_sets(mask)
    if shared_rows is None and len(groups) > 1 and max(len(r) for r, _ in groups) <= min(SMALL_GROUP_ROWS, dims // 2):
        return groups, True
    union = mask.any(1) if shared_rows is None else shared_rows
    return [(np.flatnonzero(union), np.arange(mask.shape[1]))], False


def _padded(lists: list[np.ndarray]) -> np.ndarray:
    """Ragged index arrays as one (len(lists), longest) array, -1 as padding."""
    out = np.full((len(lists), max(len(a) for a in lists)), -1, dtype=np.int64)
    for i, a in enumerate(lists):
        out[i, : len(a)] = a
    return out


def principal_coordinates(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (G, n, d) -> z (G, n, r) with orthogonal columns and the basis (G, d, r) with z = x @ basis, r = min(n, d),
    both in float64.

    From the smaller of the two Gram matrices, always in float64: in float32 the eigenvectors of small-variance
    directions are not orthogonal to working precision, which distorts the problem (measured on 2048-d features:
    float32 Newton left solutions at costs 1-100 far from their optimum). Directions of variance below 1e-12 of
    the largest are dropped (zeroed)."""
    x = x.double()
    if x.shape[1] < x.shape[2]:
        eigvals, eigvecs = torch.linalg.eigh(x @ x.transpose(1, 2))
        keep = eigvals > eigvals[:, -1:] * 1e-12
        root = torch.where(keep, eigvals.clamp_min(0).sqrt(), 0)
        basis = x.transpose(1, 2) @ (eigvecs / torch.where(keep, root, 1)[:, None, :] * keep[:, None, :])
        return eigvecs * root[:, None, :], basis  # x @ basis = x x^T V / sqrt(L) = V sqrt(L)
    basis = torch.linalg.eigh(x.transpose(1, 2) @ x)[1]
    return x @ basis, basis


def newton_cg(
    z: torch.Tensor,
    y: torch.Tensor,
    s: torch.Tensor,
    c: torch.Tensor,
    tol: float,
    max_newton: int,
    w0: torch.Tensor | None = None,
) -> torch.Tensor:
    """Newton's method for every problem of every group, from w0 (G, r, p) or zero; returns w (G, r, p) in
    principal coordinates.

    z (G, n, r) features, y (G, n, p) labels, s (G, n, p) row weights (0 = not in the problem), c (G, 1, p) costs.
    A problem stops once |grad| <= tol |w| (its certified relative distance to the optimum), as computed in the
    working precision, or when its Newton direction is no longer a descent direction there (the rounding floor).
    Each iteration works only on the problems not yet converged. The Newton direction comes from a few conjugate
    gradient steps (truncated Newton) while many problems remain; once few remain, typically those of large
    costs that need many CG steps, from the exact solution of the Newton system on the active rows
    (the finite Newton method of Keerthi & DeCoste 2005), whichever is estimated cheaper."""
    w = z.new_zeros(z.shape[0], z.shape[2], y.shape[2]) if w0 is None else w0.clone()
    margins = z @ w
    zt, z_sq_t = z.transpose(1, 2), (z * z).transpose(1, 2)
    todo = c[:, 0] > 0  # (G, p); padding problems (cost 0) are solved by w = 0
    kernel, cg_iterations = None, 10
    for _ in range(max_newton):
        if not bool(todo.any()):
            break
        pick, live = _compact(todo)  # only the problems not yet converged; their gradients, then a step
        ys, ss, ms, ws, cs = (_take(t, pick) for t in (y, s, margins, w, c))
        hinge = (1 - ys * ms).clamp_min(0)
        grad = ws - 2 * cs * (zt @ (ss * ys * hinge))
        live = live & ((grad * grad).sum(1, keepdim=True) > tol**2 * (ws * ws).sum(1, keepdim=True))
        todo.scatter_(1, pick, live[:, 0])  # a slot that is not live repeats a column that is not to do
        if not bool(live.any()):
            continue
        sub, live = _compact(live[:, 0])  # drop the problems that have just converged
        pick = torch.gather(pick, 1, sub)
        ys, ss, ms, ws, cs, hinge, grad = (_take(t, sub) for t in (ys, ss, ms, ws, cs, hinge, grad))
        cs = cs * live
        active = ss * (hinge > 0)  # the generalised Hessian: I + 2c z^T diag(active) z
        if _exact_is_cheaper((active > 0).sum(1)[live[:, 0]], cg_iterations, z.shape):
            kernel = z @ zt if kernel is None else kernel
            direction = exact_newton_direction(kernel, z, zt, active, 2 * cs, grad * live)
        else:
            direction, cg_iterations = _cg_direction(z, zt, z_sq_t, active, 2 * cs, grad * live)
        z_dir = z @ direction
        step = line_search((ws * direction).sum(1), (direction * direction).sum(1), ms, z_dir, ys, ss, cs)
        step = step[:, None, :] * live
        _put(w, pick, ws + step * direction)
        _put(margins, pick, ms + step * z_dir)
        stalled = (grad * direction).sum(1) >= 0  # not a descent direction in the working precision: done
        todo.scatter_(1, pick, live[:, 0] & ~stalled)
    if bool(todo.any()):
        logger.warning("SVM solver: %d problem(s) stopped at %d Newton iterations", int(todo.sum()), max_newton)
    return w


def _cg_direction(
    z: torch.Tensor, zt: torch.Tensor, z_sq_t: torch.Tensor, active: torch.Tensor, two_c: torch.Tensor, grad
) -> tuple[torch.Tensor, int]:
    """The truncated Newton direction: a few Jacobi-preconditioned conjugate gradient steps on
    (I + 2c z^T diag(active) z) d = -grad; returns d and the CG iterations it took."""

    def hessian_vector(v: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        a, t = _take(active, keep), _take(two_c, keep)
        return v + t * (zt @ (a * (z @ v)))

    diagonal = 1 + two_c * (z_sq_t @ active)  # Jacobi: the Hessian is near-diagonal in these coordinates
    return batched_cg(hessian_vector, -grad, diagonal, max_iter=100, rel_tol=0.1)


def _compact(todo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, p) flags -> (G, q) indices of the flagged columns first, q = most flagged in a group; and their flags
    (G, 1, q), False where a group has fewer (those slots repeat an unflagged column and must not move)."""
    q = int(todo.sum(1).max())
    pick = torch.argsort((~todo).to(torch.int8), dim=1, stable=True)[:, :q]
    return pick, torch.gather(todo, 1, pick)[:, None, :]


def _take(t: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    return torch.gather(t, 2, pick[:, None, :].expand(-1, t.shape[1], -1))


def _put(t: torch.Tensor, pick: torch.Tensor, values: torch.Tensor) -> None:
    t.scatter_(2, pick[:, None, :].expand(-1, t.shape[1], -1), values)


def batched_cg(
    matvec, rhs: torch.Tensor, diagonal: torch.Tensor, max_iter: int, rel_tol: float
) -> tuple[torch.Tensor, int]:
    """Jacobi-preconditioned conjugate gradients on every column of rhs (G, r, p), each stopping at
    |residual| <= rel_tol |rhs|. matvec(v, columns) applies the Hessians of the given columns (G, q) to v (G, r, q);
    converged columns drop out of the work. Returns the solutions and the number of iterations."""
    x = torch.zeros_like(rhs)
    keep = torch.arange(rhs.shape[2], device=rhs.device).expand(rhs.shape[0], -1)
    r, d = rhs, diagonal
    p = r / d
    rz = (r * p).sum(1, keepdim=True)
    target = rel_tol**2 * (r * r).sum(1, keepdim=True)
    iterations = 0
    for iterations in range(max_iter):  # noqa: B007 (the count is returned)
        going = (r * r).sum(1, keepdim=True) > target
        if not bool(going.any()):
            break
        if 2 * int(going.sum(2).max()) <= going.shape[2]:  # half the columns done: only the rest from now on
            sub, _ = _compact(going[:, 0])
            keep, r, p, d = torch.gather(keep, 1, sub), _take(r, sub), _take(p, sub), _take(d, sub)
            rz, target, going = (torch.gather(t, 2, sub[:, None, :]) for t in (rz, target, going))
        hp = matvec(p, keep)
        alpha = torch.where(going, rz / (p * hp).sum(1, keepdim=True).clamp_min(torch.finfo(r.dtype).tiny), 0)
        x.scatter_add_(2, keep[:, None, :].expand(-1, x.shape[1], -1), alpha * p)
        r = r - alpha * hp
        z = r / d
        rz_new = (r * z).sum(1, keepdim=True)
        p = z + (rz_new / rz.clamp_min(torch.finfo(r.dtype).tiny)) * p
        rz = rz_new
    return x, iterations


def _exact_is_cheaper(rows_active: torch.Tensor, cg_iterations: int, z_shape: torch.Size) -> bool:
    """Estimated in matrix-product flops (measured on a 2-core CPU): batched Cholesky of the live problems' active
    kernels (padded to the largest; about 2x slower per flop; gathering an element costs about 400) against
    another round of CG as long as the last one, each step two products with z, which cost at least reading z
    (about 100 per element). Never more than 2^26 gathered elements."""
    groups, n, r = z_shape
    m, count = int(rows_active.max()), rows_active.numel()
    if count * m * m > 2**26:
        return False
    exact = count * (2 * m**3 / 3 + 400 * m**2)
    return exact < max(cg_iterations, 10) * max(count * 4 * n * r, 100 * groups * n * r)


def exact_newton_direction(
    kernel: torch.Tensor, z: torch.Tensor, zt: torch.Tensor, active: torch.Tensor, two_c: torch.Tensor, grad
) -> torch.Tensor:
    """The Newton direction -H^-1 grad exactly, H = I + z_a^T W z_a with W = diag(2 c s) on the active rows a.

    By Woodbury, H^-1 = I - z_a^T (W^-1 + K_aa)^-1 z_a with K = z z^T (G, n, n): one Cholesky per problem of its
    active rows' kernel (in float64 where the working precision fails). active (G, n, q): s on active rows, else 0;
    grad (G, r, q)."""
    G, n, q = active.shape

    on = (active > 0).permute(0, 2, 1).reshape(G * q, n)
    m = int(on.sum(1).max())
    order = torch.argsort((~on).to(torch.int8), dim=1, stable=True)[:, :m]  # active rows first
    valid = torch.gather(on, 1, order)  # False where a problem has fewer than m active rows

    def active_rows_first(t: torch.Tensor) -> torch.Tensor:  # (G, n, q) -> (G * q, m): a row per problem
        return torch.gather(t.permute(0, 2, 1).reshape(G * q, n), 1, order)

    group = torch.arange(G, device=on.device).repeat_interleave(q)
    system = kernel[group[:, None, None], order[:, :, None], order[:, None, :]]
    system = system * (valid[:, :, None] & valid[:, None, :])
    weight = active_rows_first(active * two_c)
    system.diagonal(dim1=1, dim2=2).add_(torch.where(valid, 1 / weight.clamp_min(torch.finfo(z.dtype).tiny), 1.0))
    z_grad = active_rows_first(z @ grad) * valid
    factor, failed = torch.linalg.cholesky_ex(system)
    if bool(failed.any()):
        factor = torch.linalg.cholesky(system.double())
    solved = torch.cholesky_solve(z_grad[:, :, None].to(factor.dtype), factor)[:, :, 0].to(z.dtype) * valid
    full = torch.zeros(G * q, n, dtype=z.dtype, device=z.device).scatter_(1, order, solved)
    return zt @ full.reshape(G, q, n).permute(0, 2, 1) - grad


def line_search(w_d, d_d, margins, z_dir, y, s, c, iters: int = 8) -> torch.Tensor:
    """Minimise the piecewise-quadratic objective along a direction exactly (1-D Newton steps from t = 1).

    w_d = <w, d>, d_d = <d, d>: (G, q); margins, z_dir (change of the margins per unit step), y, s: (G, n, q)."""
    t = torch.ones_like(w_d)
    c = c[:, 0]
    for _ in range(iters):
        hinge = (1 - y * (margins + t[:, None, :] * z_dir)).clamp_min(0)
        slope = w_d + t * d_d - 2 * c * (s * y * z_dir * hinge).sum(1)
        curvature = d_d + 2 * c * (s * z_dir * z_dir * (hinge > 0)).sum(1)
        t = (t - slope / curvature.clamp_min(torch.finfo(t.dtype).tiny)).clamp_min(0)
    return t
