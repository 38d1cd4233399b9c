"""Layer Hessians shared by every method that reconstructs from activations.

Used by SparseGPT (pruning), GPTQ (quantization) and whitened SVD (low-rank); each method keeps
only its own column sweep.

SparseGPT and GPTQ minimise `‖W X − Ŵ X‖²` one layer at a time, whose Hessian is
`H = 2 X Xᵀ / n` (`X [in, tokens]` the layer's calibration inputs); activation-whitened SVD
uses the same `X Xᵀ`. This module accumulates it from the sequential engine's observations
(float32 products, float64 sums, so 16k+ tokens add up without drift) and factors it: dead
inputs (`H_jj == 0`, never active) are marked, dampening `λ = dampening · mean(diag H)` is
added to the diagonal, and the upper Cholesky factor `U` of `H⁻¹` (`H⁻¹ = Uᵀ U`) is formed,
whose rows give the optimal-brain-surgeon updates of the columns still to be processed. When a
factorisation fails (not positive definite in floating point), dampening is multiplied by 10
and the attempt repeated; the dampening actually used is reported. Pure tensor math.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

FALLBACK_FACTOR = 10.0
MAX_ATTEMPTS = 6


class CholeskyError(RuntimeError):
    """The Hessian stayed indefinite even with the largest dampening tried."""



def hessian_from_sum(xtx_sum: torch.Tensor, tokens: int, in_place: bool = False
                     ) -> torch.Tensor:
    """`H = 2 XᵀX / n` from an accumulated `XᵀX` (the scale matches the reference);
    `in_place`: scale the sum itself (no `in × in` copy: `HessianAccumulator.factors`)."""
    if tokens <= 0:
        raise ValueError("tokens: need at least one calibration token to build a Hessian")
    return xtx_sum.mul_(2.0 / tokens) if in_place else xtx_sum * (2.0 / tokens)


def inverse_hessian_factor(
    hessian: torch.Tensor, dampening: float
) -> tuple[torch.Tensor, float, int]:
    """Upper Cholesky factor `U` of `(H + λI)⁻¹`, with λ raised ×10 until it factorises.

    Works in float64 (the matrices are at most a few thousand wide, so this is cheap) and
    returns `(U, relative dampening used, attempts)`. `hessian` must have no zero diagonal
    and is not changed. One factorisation and one triangular inverse, by reversing the order:
    with `J` the reversal, `J H J = L Lᵀ` gives `H = R Rᵀ` for the upper `R = J L J`, so
    `H⁻¹ = R⁻ᵀ R⁻¹` and `U = R⁻¹ = J L⁻¹ J` (same result as the reference's
    cholesky -> cholesky_inverse -> cholesky, at a third of the cost).
    """
    return _inverse_factor_owned([hessian.to(torch.float64)], dampening)


def _inverse_factor_owned(
    holder: list[torch.Tensor], dampening: float
) -> tuple[torch.Tensor, float, int]:
    """`inverse_hessian_factor` of the float64 Hessian in `holder`, which this takes over:
    once the reversed, damped copy exists the Hessian itself is let go (where the caller
    kept no other reference, its memory is freed), and a retry with more dampening only
    rewrites that copy's diagonal.

    Memory: at most two `in × in` float64 matrices alive at once (the damped copy and its
    factor, then the factor and its inverse, then the inverse and its reversal): for a
    5632-wide MLP input each is 254 MB; the former code held four at its peak.
    """
    h = holder.pop()
    mean_diag = float(torch.diagonal(h).mean())
    damped = h.flip(0, 1)  # a copy; flipping keeps the diagonal on the diagonal
    del h
    diagonal = damped.diagonal().clone()
    relative = dampening
    for attempt in range(1, MAX_ATTEMPTS + 1):
        damped.diagonal().copy_(diagonal + relative * mean_diag)
        lower, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0 and bool(torch.isfinite(lower).all()):
            del damped
            inverse = torch.eye(lower.shape[0], dtype=lower.dtype, device=lower.device)
            torch.linalg.solve_triangular(lower, inverse, upper=False, out=inverse)
            del lower
            upper = inverse.flip(0, 1)
            del inverse
            if bool(torch.isfinite(upper).all()):
                return upper, relative, attempt
            # the damped copy is gone (memory): an inverse that overflowed is not retried
            raise CholeskyError(f"inverse Hessian factor overflowed at dampening {relative:g}")
        del lower
        relative = relative * FALLBACK_FACTOR if relative > 0 else 1e-4
    raise CholeskyError(
        f"Hessian not positive definite even with dampening {relative / FALLBACK_FACTOR:g} "
        f"after {MAX_ATTEMPTS} attempts"
    )


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the pruning math on one intra-op thread, then restore the setting.

    Its ops are small (one rank-1 update of at most rows x blocksize per column, matrices a
    few thousand wide): handing them to a second thread costs more than it saves, 3-10x more
    on shared cores (measured on a busy 2-core machine: 128 updates of 1536x128 took 1.6 s
    with 2 threads, 0.15 s with 1; one SmolLM2 block's seven layers 37 s vs 11 s).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)



@dataclass(frozen=True)
class HessianFactor:
    """What a column sweep needs from a Hessian; layers fed the same inputs (q/k/v, gate/up)
    share one, so it is computed once per distinct Hessian.

    With `order` (GPTQ's activation order), the factor is of the Hessian with rows and columns
    permuted by `order`: the sweep then visits input `order[k]` k-th, and `dead` is in that
    order too.
    """

    upper: torch.Tensor  # float32 upper Cholesky factor of (H + λI)⁻¹, dead inputs set to 1
    dead: torch.Tensor  # bool [in]: inputs with zero Hessian diagonal
    dampening: float  # relative dampening used
    attempts: int  # Cholesky attempts
    order: torch.Tensor | None = None  # int64 [in]: the column order the factor is for


def activation_order(hessian: torch.Tensor) -> torch.Tensor:
    """Inputs by decreasing `H_jj` (GPTQ's act order: the most active inputs are quantized
    first, while the most columns remain to absorb their error); ties keep index order."""
    return torch.sort(torch.diagonal(hessian), descending=True, stable=True).indices


def factor_hessian(
    hessian: torch.Tensor, dampening: float = 0.01, order: torch.Tensor | None = None,
) -> HessianFactor:
    """Mark dead inputs (`H_jj = 0` -> 1, as in the reference) and factor the inverse, of the
    Hessian permuted by `order` when given; `hessian` is not changed."""
    return _factor_owned([hessian.detach().to(torch.float64).clone()], dampening, order)


def _factor_owned(holder: list[torch.Tensor], dampening: float,
                  order: torch.Tensor | None) -> HessianFactor:
    """`factor_hessian` of the float64 Hessian in `holder`, taken over and changed in place
    (`HessianAccumulator.factors` hands over each sum so it is freed as soon as possible)."""
    h = holder.pop()
    if order is not None:
        h = h[order]  # the unpermuted one is let go here (the caller kept no reference)
        h = h[:, order]
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    holder.append(h)
    del h
    with one_thread():
        upper, used, attempts = _inverse_factor_owned(holder, dampening)
    return HessianFactor(upper.to(torch.float32), dead, used, attempts, order)



class HessianAccumulator:
    """Per-layer running `XᵀX` (float64) and token count, fed by the engine's `collect`.

    Layers fed the very same input tensor (Llama's q/k/v, gate/up; GPT-2's fused c_attn has
    one anyway) reuse the product just computed instead of recomputing it: same storage,
    shape, strides and version counter as the previous input, which is held so its memory
    cannot be reused by another tensor meanwhile.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}
        self._last: tuple[torch.Tensor, int, torch.Tensor] | None = None

    def __call__(self, name: str, _layer: nn.Module, inputs: torch.Tensor) -> None:
        product = self._shared_product(inputs)
        if product is None:
            x = inputs.float()
            product = (x.T @ x).to(torch.float64)
            self._last = (inputs, inputs._version, product)
        if name in self.sums:
            self.sums[name] += product
            self.tokens[name] += inputs.shape[0]
        else:
            self.sums[name] = product.clone()
            self.tokens[name] = inputs.shape[0]

    def _shared_product(self, inputs: torch.Tensor) -> torch.Tensor | None:
        if self._last is None:
            return None
        last, version, product = self._last
        same = (inputs.data_ptr() == last.data_ptr() and inputs.shape == last.shape
                and inputs.stride() == last.stride() and inputs._version == version)
        return product if same else None

    def discard(self, names: list[str] | dict[str, int]) -> None:
        """Forget these layers' sums (a caller that handles them without a Hessian)."""
        for name in names:
            self.sums.pop(name, None)
            self.tokens.pop(name, None)

    def hessian(self, name: str) -> torch.Tensor:
        """Layer `name`'s Hessian `2 XᵀX / n` (float64) so far; the sums are kept."""
        return hessian_from_sum(self.sums[name], self.tokens[name])

    def factors(self, dampening: float, act_order: bool = False) -> dict[str, HessianFactor]:
        """One factor per distinct Hessian (`2 XᵀX / n`); the sums are freed, each as soon
        as its factor is made, and the largest input's work space then has the memory to
        itself (what sets SparseGPT's and GPTQ's peak at real widths).

        `act_order`: each factor is of its Hessian permuted to `activation_order`.
        """
        self._last = None
        groups = self._equal_groups()
        for group in groups:
            for name in group[1:]:
                del self.sums[name]
        factors: dict[str, HessianFactor] = {}
        for group in groups:
            holder = [hessian_from_sum(self.sums.pop(group[0]), self.tokens[group[0]],
                                       in_place=True)]
            order = activation_order(holder[0]) if act_order else None
            factor = _factor_owned(holder, dampening, order)
            factors.update(dict.fromkeys(group, factor))
        return factors

    def _equal_groups(self) -> list[list[str]]:
        """Layers whose sums and token counts are equal (fed the same inputs), first name
        first. A function of its own so that no loop variable of the caller keeps a sum
        alive while the widest one is factored."""
        groups: list[list[str]] = []
        for name, total in self.sums.items():
            group = next((g for g in groups if self.tokens[g[0]] == self.tokens[name]
                          and torch.equal(self.sums[g[0]], total)), None)
            if group is None:
                groups.append([name])
            else:
                group.append(name)
        return groups
