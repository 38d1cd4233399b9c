"""Activation-whitened low-rank approximation (SVD-LLM, Wang et al. 2024): pure tensor math.

A layer `W [out, in]` sees calibration inputs `X [in, tokens]`. What matters is its output
error `‖W X − W' X‖_F`, not the weight error `‖W − W'‖_F` that plain truncated SVD minimises.
With the Gram matrix `G = X Xᵀ = S Sᵀ`, `‖(W − W') X‖²_F = ‖(W − W') S‖²_F`, so the best rank-r
`W'` is the truncated SVD of `W S` mapped back by `S⁻¹`, and every discarded singular value
`σᵢ` of `W S` costs exactly `σᵢ²` of squared output error. That makes three things cheap and
exact on the calibration set:

- the factors: `up = U_r Σ_r^½`, `down = Σ_r^½ V_rᵀ S⁻¹` (`whitened_svd`, `.factors`);
- the loss of every rank before anything is changed (`.loss`), which the greedy allocation
  across layers spends a parameter budget on (`allocate_by_loss`);
- a closed-form refit of `up` with `down` fixed against any target outputs (`refit_up`), with
  its error computed from the same accumulated statistics (`fit_error`).

`S` comes from a Cholesky factor of `G + λI` (λ relative to the mean diagonal, for inputs that
never fire), or, when that fails or λ is 0 and `G` is singular, from an eigendecomposition with
eigenvalues floored. Everything is float64: the Gram matrices of LLM activations span many
orders of magnitude (a few "massive" channels), and the matrices are at most a few thousand
wide, so double precision is cheap here and avoids a wrong `S⁻¹`.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch

EIGEN_FLOOR = 1e-10  # eigenvalues below this share of the largest are raised to it


@dataclass(frozen=True)
class Whitening:
    """`root` S with `S Sᵀ = G + λ I`, its inverse, and how it was obtained."""

    root: torch.Tensor  # [in, in] float64
    inverse: torch.Tensor  # [in, in] float64
    dampening: float  # λ relative to mean(diag G)
    method: str  # "cholesky", "eigen" or "identity"


def identity_whitening(width: int, device: torch.device | None = None) -> Whitening:
    """S = I: the whitened SVD becomes plain truncated SVD (the `svd` init)."""
    eye = torch.eye(width, dtype=torch.float64, device=device)
    return Whitening(eye, eye, 0.0, "identity")


def whitening_factor(gram: torch.Tensor, dampening: float = 0.01) -> Whitening:
    """Factor `G + λ·mean(diag G)·I = S Sᵀ`: Cholesky, else eigendecomposition.

    Cholesky gives a lower-triangular `S` whose inverse is one triangular solve; it fails when
    `G` is singular (dead inputs, fewer tokens than inputs) and dampening is 0 or too small to
    make it positive definite in floating point. The eigen fallback `S = Q Λ^½` with floored
    `Λ` always exists; both satisfy `S Sᵀ ≈ G + λI`, which is all the loss identity needs.
    """
    g = gram.detach().to(torch.float64)
    width = g.shape[0]
    mean_diag = float(torch.diagonal(g).mean().clamp_min(1e-300))
    eye = torch.eye(width, dtype=torch.float64, device=g.device)
    damped = g + dampening * mean_diag * eye
    lower, info = torch.linalg.cholesky_ex(damped)
    if int(info) == 0:
        inverse = torch.linalg.solve_triangular(lower, eye, upper=False)
        if bool(torch.isfinite(inverse).all()):
            return Whitening(lower, inverse, dampening, "cholesky")
    values, vectors = torch.linalg.eigh((damped + damped.T) / 2)
    values = values.clamp_min(float(values.max().clamp_min(1e-300)) * EIGEN_FLOOR)
    root = vectors * values.sqrt()
    inverse = (vectors / values.sqrt()).T
    return Whitening(root, inverse, dampening, "eigen")


@dataclass(frozen=True)
class WhitenedSVD:
    """SVD of `W S`: `u [out, k]`, `sigma [k]` (descending), `vh [k, in]`, and `S⁻¹`."""

    u: torch.Tensor
    sigma: torch.Tensor
    vh: torch.Tensor
    inverse: torch.Tensor

    @property
    def energy(self) -> float:
        """`Σσᵢ² = ‖W S‖²_F`: the layer's output energy on the calibration inputs (plus λ‖W‖²)."""
        return float(self.sigma.pow(2).sum())

    def tail(self) -> torch.Tensor:
        """`tail[r] = Σ_{i≥r} σᵢ²` for r = 0..k: the squared output error of keeping rank r."""
        squared = self.sigma.pow(2)
        reverse = torch.cumsum(squared.flip(0), 0).flip(0)
        return torch.cat([reverse, reverse.new_zeros(1)])

    def loss(self, rank: int) -> float:
        """Squared output error `‖(W − W'_r) S‖²_F` of the rank-`rank` truncation."""
        return float(self.sigma[rank:].pow(2).sum())

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`up = U_r Σ_r^½ [out, r]`, `down = Σ_r^½ V_rᵀ S⁻¹ [r, in]`, float64.

        Σ split evenly keeps both factors on the same scale (what PELA trains best from).
        """
        root = self.sigma[:rank].sqrt()
        up = self.u[:, :rank] * root
        down = (root[:, None] * self.vh[:rank]) @ self.inverse
        return up, down


def whitened_svd(weight: torch.Tensor, whitening: Whitening,
                 dtype: torch.dtype = torch.float32,
                 output: Whitening | None = None) -> WhitenedSVD:
    """The SVD of `W S` (the truncation-aware decomposition), returned in float64.

    `W S` is formed in float64; the SVD itself runs in `dtype`. float32 is the default because
    LAPACK's float64 divide-and-conquer SVD of a 1536x576 matrix took 20 s against 2.6 s in
    float32 on the 2-core CI machine, and the singular vectors only need float32 accuracy
    (σ and the losses come out to ~1e-7 of the largest σ²); the ill-conditioned pieces, the
    Gram matrix's factor and inverse and the product `V_rᵀ S⁻¹`, stay float64.

    `output` (`T Tᵀ = F`, a Gram matrix of the layer's *output* side, e.g. the gradients of
    the loss there) weights the output error too: the SVD is of `Tᵀ W S`, which minimises
    `tr((W − W') G (W − W')ᵀ F)` (a Kronecker-factored second-order loss), and `u` is mapped
    back by `T⁻ᵀ` so that `factors` need not know.
    """
    w = weight.detach().to(device=whitening.root.device, dtype=torch.float64)
    product = w @ whitening.root
    if output is not None:
        product = output.root.to(product.device).T @ product
    u, sigma, vh = torch.linalg.svd(product.to(dtype), full_matrices=False)
    u = u.double()
    if output is not None:
        u = output.inverse.to(u.device).T @ u
    return WhitenedSVD(u, sigma.double(), vh.double(), whitening.inverse)


def output_error(weight: torch.Tensor, approx: torch.Tensor, gram: torch.Tensor) -> float:
    """`tr((W − W') G (W − W')ᵀ) = ‖(W − W') X‖²_F` exactly, from the Gram matrix."""
    diff = weight.detach().to(torch.float64) - approx.detach().to(torch.float64)
    g = gram.to(device=diff.device, dtype=torch.float64)
    return float(((diff @ g) * diff).sum())


def output_energy(weight: torch.Tensor, gram: torch.Tensor) -> float:
    """`‖W X‖²_F` from the Gram matrix: what a relative output error is relative to."""
    w = weight.detach().to(torch.float64)
    return float(((w @ gram.to(device=w.device, dtype=torch.float64)) * w).sum())


def allocate_by_loss(
    gains: dict[str, torch.Tensor], shapes: dict[str, tuple[int, int]], budget: float,
    max_layer_keep: float = 1.0,
) -> dict[str, int | None]:
    """Spend `budget` parameters on the singular directions that save the most loss per
    parameter; a layer may instead stay dense (None).

    `gains[name][i]`: the loss saved by keeping direction i (σᵢ², made comparable across
    layers by the caller), descending. Every layer starts at rank 1 (cost in+out); its next
    item is its next direction (cost in+out), until a rank would keep more than
    `max_layer_keep` of the layer's in*out parameters: then its next item is "stay dense"
    (cost: the rest of in*out, gain: every direction still discarded). A max-heap on gain per
    parameter takes items in order; an item that does not fit the budget ends its layer.
    """
    ranks: dict[str, int | None] = dict.fromkeys(shapes, 1)
    spent = float(sum(out + inp for out, inp in shapes.values()))
    tails = {name: _tail(gains[name]) for name in shapes}
    heap: list[tuple[float, str]] = []
    for name in shapes:
        _push(heap, name, 1, shapes[name], tails[name], max_layer_keep)
    while heap:
        _neg_ratio, name = heapq.heappop(heap)
        rank = ranks[name]
        cost, _gain, dense = _next_item(rank, shapes[name], tails[name], max_layer_keep)
        if spent + cost > budget:
            continue
        spent += cost
        if dense:
            ranks[name] = None
            continue
        ranks[name] = rank + 1
        _push(heap, name, rank + 1, shapes[name], tails[name], max_layer_keep)
    return ranks


def _tail(gain: torch.Tensor) -> list[float]:
    squared = gain.double()
    reverse = torch.cumsum(squared.flip(0), 0).flip(0)
    return [*reverse.tolist(), 0.0]


def _next_item(
    rank: int, shape: tuple[int, int], tail: list[float], max_layer_keep: float
) -> tuple[float, float, bool]:
    """(cost, gain, is "stay dense") of the layer's next step up from `rank`."""
    out, inp = shape
    directions = len(tail) - 1
    if (rank + 1) * (out + inp) > max_layer_keep * out * inp or rank >= directions:
        return out * inp - rank * (out + inp), tail[min(rank, directions)], True
    return float(out + inp), tail[rank] - tail[rank + 1], False


def _push(heap: list[tuple[float, str]], name: str, rank: int, shape: tuple[int, int],
          tail: list[float], max_layer_keep: float) -> None:
    cost, gain, _dense = _next_item(rank, shape, tail, max_layer_keep)
    if cost > 0:
        heapq.heappush(heap, (-gain / cost, name))


def refit_up(cross: torch.Tensor, gram_z: torch.Tensor, ridge: float = 1e-8) -> torch.Tensor:
    """The least-squares `up` for fixed `down`: minimise `‖Y − up Z‖²_F` with `Z = down X`.

    `cross = Σ y zᵀ [out, r]`, `gram_z = Σ z zᵀ [r, r]`; `up = cross (gram_z + εI)⁻¹`, with a
    tiny relative ridge so a rank-deficient `Z` still gives a finite answer.
    """
    b = gram_z.to(torch.float64)
    scale = float(torch.diagonal(b).mean().clamp_min(1e-300))
    eye = torch.eye(b.shape[0], dtype=b.dtype, device=b.device)
    system = b + ridge * scale * eye
    return torch.linalg.solve(system, cross.to(torch.float64).T).T


def fit_error(target_energy: float, cross: torch.Tensor, gram_z: torch.Tensor,
              up: torch.Tensor) -> float:
    """`‖Y − up Z‖²_F = ‖Y‖² − 2 tr(upᵀ cross) + tr(up gram_z upᵀ)`, from the statistics."""
    u = up.to(torch.float64)
    return (target_energy - 2.0 * float((u * cross.to(torch.float64)).sum())
            + float(((u @ gram_z.to(torch.float64)) * u).sum()))
