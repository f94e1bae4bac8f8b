"""The linear algebra of QR channel pruning: the factored matrix, its pivots, the least squares.

See :mod:`smof_onnx.methods.qr` for the method; this module holds the three computations.

**What is factored.** For a selection unit (a set of channel slots) and one consumer layer
``L`` with sampled input patches ``X`` (``S x D``) and weights ``W`` (``Cout x D``), the
contribution of slot ``i`` to ``L``'s output is ``Z_i = X[:, J_i] W[:, J_i]^T`` (``S x Cout``),
``J_i`` the patch columns that read slot ``i``. The matrix of the method is

    A = [vec(Z_1 / sqrt(E_L)) ... vec(Z_n / sqrt(E_L))]    stacked over every consumer L,

one column per slot, rows = (consumer, sampled position, output channel); ``E_L = ||X W^T||_F^2``
is ``L``'s output energy, so every consumer weighs the same and the residuals read as
relative output errors. ``A`` is never formed (it has ``S * Cout`` rows per consumer): pivoted
QR depends on ``A`` only through its Gram matrix ``G = A^T A`` (each pivot is the column with
the largest norm after projecting out the chosen ones, and all of that is inner products),
and ``G`` is exact from the streamed statistics ``C = X^T X``:

    G_ij = sum_L <Z_i, Z_j> / E_L = sum_L sum_{a in J_i, b in J_j} C_ab (W^T W)_ab / E_L.

So we factor ``B = Lambda^(1/2) V^T`` (``n x n``, from ``G = V Lambda V^T``), which satisfies
``B^T B = G``, with LAPACK geqp3 (``scipy.linalg.qr(B, pivoting=True, mode='r')``): the same
pivots and the same ``|R|`` as factoring ``A`` itself, at ``n x n`` cost and bounded memory.

**Residual curve.** With pivots ``p`` and triangle ``R``, keeping the first ``k`` pivots leaves
``res(k) = ||R[k:, k:]||_F^2 / trace(G)``: the relative output energy not in the span of the
kept contributions. It is an upper bound on the error after least squares (which may rescale
each kept channel's taps freely, not only the whole contribution).

**Least squares.** For consumer ``L`` and kept columns ``J``:
``W'_J^T = (X'_J^T X'_J + lambda I)^-1 X'_J^T Y`` with ``Y = X W^T`` the original outputs and
``X'`` the (possibly upstream-pruned) inputs; ``lambda = ridge * trace(X'_J^T X'_J) / |J|``.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse

__all__ = ["consumer_gram", "pivoted_order", "least_squares"]


def consumer_gram(xtx: np.ndarray, weight: np.ndarray, cols: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """(``G_L`` unnormalised, ``E_L``): slot Gram of one consumer and its output energy."""
    h = xtx * (weight.T @ weight)               # C o (W^T W), D x D
    n, d = len(cols), xtx.shape[0]
    rows = np.concatenate([np.asarray(c, np.int64) for c in cols]) if cols else np.zeros(0, np.int64)
    owner = np.concatenate([np.full(len(c), i, np.int64) for i, c in enumerate(cols)]) if cols else rows
    m = scipy.sparse.csr_matrix((np.ones(rows.size), (rows, owner)), shape=(d, n))
    g = np.asarray((m.T @ (m.T @ h).T).T) if n else np.zeros((0, 0))
    return 0.5 * (g + g.T), float(h.sum())


def pivoted_order(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pivot order, residual curve ``res[0..n]``) of the columns whose Gram matrix is ``gram``."""
    n = gram.shape[0]
    total = float(np.trace(gram))
    if n == 0 or total <= 0:
        return np.arange(n), np.zeros(n + 1)
    lam, vec = np.linalg.eigh(gram)
    b = np.sqrt(np.clip(lam, 0, None))[:, None] * vec.T
    r, piv = scipy.linalg.qr(b, pivoting=True, mode="r")
    row_energy = np.sum(np.triu(r) ** 2, axis=1)
    tail = np.concatenate([np.cumsum(row_energy[::-1])[::-1], [0.0]])
    res = np.clip(tail / total, 0.0, 1.0)
    return np.asarray(piv, np.int64), np.minimum.accumulate(res)


def least_squares(xtx: np.ndarray, xty: np.ndarray, keep_cols: np.ndarray, ridge: float) -> np.ndarray:
    """``V`` (``|J| x Cout``) minimising ``||X_J V - Y||^2 + lambda ||V||^2`` from ``X^T X``, ``X^T Y``."""
    a = xtx[np.ix_(keep_cols, keep_cols)]
    b = xty[keep_cols]
    if a.size == 0:
        return np.zeros((0, xty.shape[1]))
    lam = ridge * float(np.trace(a)) / len(keep_cols)
    if lam > 0:
        try:
            return scipy.linalg.solve(a + lam * np.eye(len(keep_cols)), b, assume_a="pos")
        except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
            pass
    return scipy.linalg.lstsq(a, b, cond=None)[0]


def ls_curve(xtx: np.ndarray, weight: np.ndarray, cols: list[np.ndarray], order: np.ndarray,
             ridge: float) -> np.ndarray:
    """Relative least-squares error ``err[k]``, k = 0..n, of one consumer refitted on the first ``k``
    slots of ``order``: ``1 - ||P_k Y||^2 / ||Y||^2`` with ``Y = X W^T`` and ``P_k`` the projection
    on the kept patch columns (ridge-regularised as in :func:`least_squares`).

    All ``k`` at once: with the columns in pivot order, ``C + lambda I = L L^T`` (Cholesky) and
    ``z = L^-1 X^T Y``, the energy explained by the first ``m`` columns is ``sum_{r<m} ||z_r||^2``.
    """
    idx = np.concatenate([np.asarray(cols[i], np.int64) for i in order]) if len(order) else np.zeros(0, np.int64)
    bounds = np.cumsum([0] + [len(cols[i]) for i in order])
    energy = float(np.sum(xtx * (weight.T @ weight)))
    if energy <= 0 or idx.size == 0:
        return np.zeros(len(order) + 1)
    c = xtx[np.ix_(idx, idx)]
    lam = max(ridge, 1e-10) * float(np.trace(c)) / idx.size
    try:
        low = scipy.linalg.cholesky(c + lam * np.eye(idx.size), lower=True)
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
        low = scipy.linalg.cholesky(c + (lam * 1e3 + 1e-12) * np.eye(idx.size), lower=True)
    z = scipy.linalg.solve_triangular(low, xtx[idx] @ weight.T, lower=True)
    explained = np.concatenate([[0.0], np.cumsum(np.sum(z ** 2, axis=1))])[bounds]
    err = np.clip(1.0 - explained / energy, 0.0, 1.0)
    return np.minimum.accumulate(err)
