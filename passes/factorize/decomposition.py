"""Numerics of the factorize pass: whitening, truncated decompositions, rank rules, errors.

Plain float64 numpy, no graph objects. A layer is a linear map ``y = A p`` of an input vector
``p``: the input features of a Gemm/MatMul (``A`` is out x in), or a Conv's receptive field
flattened channel-major ``(Cin, k1, k2, ...)`` (``A = W.reshape(Cout, -1)``). With
``S = E[p p^T]`` over calibration data, the relative output error of an approximation ``A'`` is

    e = sqrt( tr((A - A') S (A - A')^T) / tr(A S A^T) )

and without data ``S = I`` (the relative Frobenius error of the weights).

Whitening (ASVD / SVD-LLM): with ``X = (S + d I)^(1/2)`` (``d`` a small ridge, ``damping`` times
the mean eigenvalue of ``S``), the truncated SVD of ``A X`` undone by ``X^-1`` minimizes the output
error on the (ridged) data instead of the weight error. At full rank ``X X^-1 = I`` and every
factorization here reconstructs ``A`` exactly (up to float64 rounding).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

#: cumulative energy fractions are compared with this slack (float64 sums of many terms).
_ENERGY_SLACK = 1e-12


def whitener(moment: np.ndarray, damping: float) -> tuple[np.ndarray, np.ndarray]:
    """``(X, X^-1)`` with ``X = (S + d I)^(1/2)`` symmetric, ``d = damping * mean eigenvalue``.

    Works on a stack of moments (``..., n, n``). A zero moment (a dead input) gives identities.
    """
    s = 0.5 * (moment + np.swapaxes(moment, -1, -2))
    vals, vecs = np.linalg.eigh(s)
    vals = np.clip(vals, 0.0, None)
    mean = vals.mean(axis=-1, keepdims=True)
    ridge = np.where(mean > 0, damping * mean, 1.0)
    vals = np.where(mean > 0, vals + ridge, 1.0)
    root = np.sqrt(vals)
    x = (vecs * root[..., None, :]) @ np.swapaxes(vecs, -1, -2)
    xinv = (vecs / root[..., None, :]) @ np.swapaxes(vecs, -1, -2)
    return x, xinv


def relative_error(delta: np.ndarray, a: np.ndarray, moment: np.ndarray | None) -> float:
    """``sqrt(tr(D S D^T) / tr(A S A^T))`` for D = ``delta`` (S = I when ``moment`` is None)."""
    if moment is None:
        num, den = float(np.sum(delta * delta)), float(np.sum(a * a))
    else:
        num, den = float(np.sum((delta @ moment) * delta)), float(np.sum((a @ moment) * a))
    if den <= 0.0:
        return 0.0
    return math.sqrt(max(num, 0.0) / den)


# -- rank rules ----------------------------------------------------------------------------


def rank_for_fraction(fraction: float, full: int) -> int:
    """``ceil(fraction * full)``, at least 1 and at most ``full``."""
    return min(full, max(1, math.ceil(fraction * full - 1e-9)))


def rank_for_energy(energy: np.ndarray, kept: float) -> int:
    """Smallest r whose leading ``energy[:r]`` hold at least ``kept`` of the total."""
    total = float(np.sum(energy))
    if total <= 0.0:
        return 1
    cumulative = np.cumsum(energy) / total
    r = int(np.searchsorted(cumulative, kept - _ENERGY_SLACK, side="left")) + 1
    return min(len(energy), max(1, r))


def smallest_within(count: int, error_at: Callable[[int], float], budget: float) -> int:
    """Smallest index in ``range(count)`` with ``error_at(i) <= budget``, by bisection.

    Candidates are ordered by growing rank (errors shrink along them); the last is full rank,
    accepted whatever its rounding error. Only measured candidates are ever returned.
    """
    lo, hi = 0, count - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if error_at(mid) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return lo


def weight_spectra(w: np.ndarray, method: str) -> tuple[np.ndarray, ...]:
    """Squared singular values of the weights alone, what ``energy=`` reads (data-free, so the
    same ranks are chosen with or without data). svd: of A (out x in); tucker: of the input-
    and output-channel unfoldings of W (Cout, Cin, kf); dw: of each ``W[:, c]``, summed over c."""
    if method == "svd":
        return (_gram_spectrum(w),)
    cout, cin, kf = w.shape
    if method == "tucker":
        return _gram_spectrum(w.transpose(1, 0, 2).reshape(cin, -1)), _gram_spectrum(w.reshape(cout, -1))
    return (np.sum(np.linalg.svd(w.transpose(1, 0, 2), compute_uv=False) ** 2, axis=0),)


def _gram_spectrum(a: np.ndarray) -> np.ndarray:
    """Squared singular values of ``a``, descending, as eigenvalues of its smaller Gram matrix
    (cheaper than an SVD of a wide matrix; squared values are all the energy rule needs)."""
    gram = a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a
    return np.clip(np.linalg.eigvalsh(gram)[::-1], 0.0, None)


def _top_eigh(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, clipped at 0) and eigenvectors of a symmetric PSD matrix."""
    vals, vecs = np.linalg.eigh(0.5 * (gram + gram.T))
    return np.clip(vals[::-1], 0.0, None), vecs[:, ::-1]


# -- svd: a linear map -> two ------------------------------------------------------------


@dataclass
class LowRankLinear:
    """``A = left @ diag(sigma) @ right``; ``left`` has orthonormal columns. ``sigma`` are the
    singular values of ``A`` (or of ``A X`` when whitened); ``output_energy[i]`` is component i's
    share of ``tr(A S A^T)``, so truncation errors are tail sums."""

    left: np.ndarray
    sigma: np.ndarray
    right: np.ndarray
    output_energy: np.ndarray

    @property
    def full_rank(self) -> int:
        return len(self.sigma)

    def factors(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """``(G, F)`` with ``A_r = G @ F``: F (r x in) applied first; sigma split evenly."""
        root = np.sqrt(self.sigma[:r])
        return self.left[:, :r] * root, root[:, None] * self.right[:r]

    def error(self, r: int) -> float:
        total = float(np.sum(self.output_energy))
        if total <= 0.0:
            return 0.0
        return math.sqrt(max(float(np.sum(self.output_energy[r:])), 0.0) / total)


def decompose_linear(a: np.ndarray, moment: np.ndarray | None, *, whiten: bool,
                     damping: float) -> LowRankLinear:
    """SVD of ``a`` (out x in), whitened by ``moment`` (in x in) when given and ``whiten``."""
    if moment is not None and whiten:
        x, xinv = whitener(moment, damping)
        left, sigma, qt = np.linalg.svd(a @ x, full_matrices=False)
        right = qt @ xinv
    else:
        left, sigma, right = np.linalg.svd(a, full_matrices=False)
    if moment is None:
        output_energy = sigma ** 2
    else:
        output_energy = sigma ** 2 * np.einsum("ki,ij,kj->k", right, moment, right, optimize=True)
    return LowRankLinear(left, sigma, right, output_energy)


# -- tucker: KxK Conv -> 1x1, KxK, 1x1 ---------------------------------------------------------


@dataclass
class TuckerBases:
    """Channel-mode bases of a Conv kernel ``W`` (Cout, Cin, kf), kf = prod(kernel).

    Input mode: ``W_k ~ W_k @ in_basis[:, :r1] @ in_proj[:r1]`` for every kernel position k
    (an oblique projection when whitened). Output mode: ``W ~ U U^T W`` with ``U =
    out_basis[:, :r2]`` orthonormal. The energies (squared singular values, whitened when the
    bases are) order the ``max-error`` search path.
    """

    in_basis: np.ndarray   # (Cin, k1)
    in_proj: np.ndarray    # (k1, Cin)
    in_energy: np.ndarray  # (k1,)
    out_basis: np.ndarray  # (Cout, k2)
    out_energy: np.ndarray  # (k2,)

    @property
    def full_ranks(self) -> tuple[int, int]:
        return len(self.in_energy), len(self.out_energy)


def tucker_bases(w: np.ndarray, patch_moment: np.ndarray | None, *, whiten: bool,
                 damping: float) -> TuckerBases:
    """HOSVD on the channel modes (Kim et al. 2016), whitened by the data when asked.

    Whitened, the input mode uses the channel moment (the mean over kernel positions of the
    diagonal blocks of the patch moment: a Kronecker approximation), and the output mode the
    eigenvectors of the layer's output moment ``W S W^T`` (exact for the output projection).
    """
    cout, cin, kf = w.shape
    stacked = w.transpose(0, 2, 1).reshape(cout * kf, cin)  # rows: (o, k); columns: c
    wm = w.reshape(cout, cin * kf)
    if patch_moment is not None and whiten:
        blocks = patch_moment.reshape(cin, kf, cin, kf)
        channel_moment = np.einsum("akbk->ab", blocks) / kf
        x, xinv = whitener(channel_moment, damping)
        stacked = stacked @ x
        out_moment = wm @ patch_moment @ wm.T
    else:
        x = xinv = np.eye(cin)
        out_moment = wm @ wm.T
    # right singular vectors of the stacked slices = eigenvectors of their Gram matrix
    in_energy, b = _top_eigh(stacked.T @ stacked)
    out_energy, u = _top_eigh(out_moment)
    k1, k2 = min(cin, cout * kf), min(cout, cin * kf)
    return TuckerBases(x @ b[:, :k1], b[:, :k1].T @ xinv, in_energy[:k1], u[:, :k2], out_energy[:k2])


def tucker_factors(w: np.ndarray, bases: TuckerBases, r1: int, r2: int):
    """``(first (r1, Cin), core (r2, r1, kf), last (Cout, r2))`` of the rank-(r1, r2) kernel."""
    q, u = bases.in_basis[:, :r1], bases.out_basis[:, :r2]
    core = np.einsum("oa,ock,cb->abk", u, w, q, optimize=True)
    return bases.in_proj[:r1], core, u


def tucker_reconstruct(first: np.ndarray, core: np.ndarray, last: np.ndarray) -> np.ndarray:
    return np.einsum("oa,abk,bc->ock", last, core, first, optimize=True)


def tucker_path(bases: TuckerBases) -> list[tuple[int, int]]:
    """Rank pairs grown together along a common energy level, ending at full rank: the
    candidates the ``max-error`` rule bisects (MACs grow along the path)."""
    levels = []
    for energy in (bases.in_energy, bases.out_energy):
        total = float(np.sum(energy))
        if total > 0.0:
            levels.extend(np.cumsum(energy) / total)
    pairs: list[tuple[int, int]] = []
    for level in sorted(set(levels)):
        pair = (rank_for_energy(bases.in_energy, level), rank_for_energy(bases.out_energy, level))
        if not pairs or pair != pairs[-1]:
            pairs.append(pair)
    full = bases.full_ranks
    if not pairs or pairs[-1] != full:
        pairs.append(full)
    return pairs


# -- dw: dense KxK Conv -> depthwise KxK (T per channel) + 1x1 ---------------------------------


@dataclass
class DecoupledKernel:
    """Per-input-channel SVD of a Conv kernel (network decoupling): for channel c,
    ``W[:, c, :] = left[c] @ diag(sigma[c]) @ right[c]`` (Cout x kf), whitened per channel by the
    diagonal block of the patch moment when asked."""

    left: np.ndarray   # (Cin, Cout, t)
    sigma: np.ndarray  # (Cin, t)
    right: np.ndarray  # (Cin, t, kf)

    @property
    def full_rank(self) -> int:
        return self.sigma.shape[1]

    def factors(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """``(depthwise (Cin*t, kf), pointwise (Cout, Cin*t))``; filter c*t + j belongs to
        input channel c (the output order of a grouped Conv with group = Cin)."""
        cin = self.sigma.shape[0]
        root = np.sqrt(self.sigma[:, :t])
        depthwise = (root[:, :, None] * self.right[:, :t]).reshape(cin * t, -1)
        pointwise = (self.left[:, :, :t] * root[:, None, :]).transpose(1, 0, 2).reshape(-1, cin * t)
        return depthwise, pointwise

    def reconstruct(self, t: int) -> np.ndarray:
        left = self.left[:, :, :t] * self.sigma[:, None, :t]
        return np.einsum("cot,ctk->ock", left, self.right[:, :t], optimize=True)


def decouple(w: np.ndarray, patch_moment: np.ndarray | None, *, whiten: bool,
             damping: float) -> DecoupledKernel:
    cout, cin, kf = w.shape
    stack = w.transpose(1, 0, 2)  # (Cin, Cout, kf)
    if patch_moment is not None and whiten:
        blocks = patch_moment.reshape(cin, kf, cin, kf)
        diag = blocks[np.arange(cin), :, np.arange(cin), :]  # (Cin, kf, kf)
        x, xinv = whitener(diag, damping)
        left, sigma, qt = np.linalg.svd(stack @ x, full_matrices=False)
        return DecoupledKernel(left, sigma, qt @ xinv)
    left, sigma, right = np.linalg.svd(stack, full_matrices=False)
    return DecoupledKernel(left, sigma, right)
