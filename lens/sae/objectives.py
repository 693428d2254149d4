"""The training math of :func:`lens.sae.train`: forward passes, losses and the JumpReLU straight-through estimators.

- :func:`forward`: ``(pre-activations, feature acts, reconstruction)`` of a training SAE for ``standard``
  (ReLU), ``topk`` (top-k of ``pre``, then ReLU) and ``jumprelu`` (``pre * (pre > threshold)``, through
  :class:`JumpReLUFunction`). Inputs arrive already scaled (``normalize_activations`` is the trainer's business).
- JumpReLU (Rajamanoharan et al. 2024, "Jumping Ahead"; SAELens's ``JumpReLU`` / ``Step``): the forward is
  exact; the backward uses the rectangle kernel ``K(u) = 1{-1/2 < u < 1/2}`` of bandwidth ``eps`` as the
  pseudo-derivative of the Heaviside step in the threshold:

  - ``JumpReLU(z; t) = z * H(z - t)``: ``dz = g * H(z - t)``, ``dt = sum_batch -(t / eps) * K((z - t) / eps) * g``;
  - ``Step(z; t) = H(z - t)`` (the L0 penalty): ``dz = 0``, ``dt = sum_batch -(1 / eps) * K((z - t) / eps) * g``.

  The trainer keeps ``log_threshold`` (``t = exp(log_threshold)``, as SAELens), so autograd multiplies ``dt`` by ``t``.
- :func:`aux_loss`: Gao et al.'s AuxK loss on dead latents (TopK).

>>> z = torch.tensor([[0.2, 1.0]], requires_grad=True); t = torch.tensor([0.5, 0.5], requires_grad=True)
>>> jumprelu(z, t, 0.001)
tensor([[0., 1.]], grad_fn=<JumpReLUFunctionBackward>)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from lens.sae.modules import SAE


def rectangle(u: Tensor) -> Tensor:
    """The rectangle kernel ``1{-1/2 < u < 1/2}`` in ``u``'s dtype."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


def _sum_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sum a broadcast gradient back to ``shape`` (the threshold's ``[d_sae]``)."""
    lead = grad.ndim - len(shape)
    grad = grad.sum(dim=tuple(range(lead))) if lead > 0 else grad
    keep = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(dim=keep, keepdim=True) if keep else grad


class JumpReLUFunction(torch.autograd.Function):
    """``z * (z > threshold)`` with the rectangle-kernel pseudo-derivative in ``threshold`` (module docstring)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return z * (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        dz = grad * (z > threshold).to(grad.dtype) if ctx.needs_input_grad[0] else None
        dt = None
        if ctx.needs_input_grad[1]:
            dt = _sum_to(-(threshold / eps) * rectangle((z - threshold) / eps) * grad, threshold.shape)
        return dz, dt, None


class StepFunction(torch.autograd.Function):
    """The Heaviside step ``(z > threshold)`` with the rectangle-kernel pseudo-derivative in ``threshold``; no
    gradient reaches ``z`` (SAELens's ``Step``, used for the L0 penalty)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor | None, None]:
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        dt = None
        if ctx.needs_input_grad[1]:
            dt = _sum_to(-(1.0 / eps) * rectangle((z - threshold) / eps) * grad, threshold.shape)
        return None, dt, None


def jumprelu(
    z: Float[Tensor, "*batch d_sae"], threshold: Float[Tensor, " d_sae"], bandwidth: float
) -> Float[Tensor, "*batch d_sae"]:
    """JumpReLU ``z * (z > threshold)`` with straight-through threshold gradients (:class:`JumpReLUFunction`)."""
    return JumpReLUFunction.apply(z, threshold, bandwidth)


def step(
    z: Float[Tensor, "*batch d_sae"], threshold: Float[Tensor, " d_sae"], bandwidth: float
) -> Float[Tensor, "*batch d_sae"]:
    """The step ``(z > threshold)`` with straight-through threshold gradients (:class:`StepFunction`)."""
    return StepFunction.apply(z, threshold, bandwidth)


def geometric_median(x: Float[Tensor, "rows d"], iters: int = 20) -> Float[Tensor, " d"]:
    """An approximate geometric median of the rows of ``x``: Weiszfeld's iteration from the mean (float64)."""
    x = x.double()
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(1e-8)
        y = (w[:, None] * x).sum(0) / w.sum()
    return y


def forward(
    sae: SAE,
    x: Float[Tensor, "batch d_in"],
    threshold: Float[Tensor, " d_sae"] | None = None,
    bandwidth: float = 0.001,
) -> tuple[Float[Tensor, "batch d_sae"], Float[Tensor, "batch d_sae"], Float[Tensor, "batch d_out"]]:
    """``(pre-activations, feature acts, reconstruction)`` of ``sae`` on ``x`` (already normalised), with
    gradients. ``threshold`` (jumprelu): the trained threshold (``exp(log_threshold)``); it equals
    ``sae.threshold``'s values, so the acts equal ``sae.encode``'s."""
    x_in = x - sae.b_dec if sae.cfg.apply_b_dec_to_input else x
    pre = x_in @ sae.W_enc + sae.b_enc
    arch = sae.cfg.architecture
    if arch == "topk":
        top = pre.topk(sae.cfg.k, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    elif arch == "jumprelu":
        acts = jumprelu(pre, threshold, bandwidth)
    else:
        acts = torch.relu(pre)
    return pre, acts, acts @ sae.W_dec + sae.b_dec


def aux_loss(
    sae: SAE,
    target: Float[Tensor, "batch d_out"],
    recon: Float[Tensor, "batch d_out"],
    pre: Float[Tensor, "batch d_sae"],
    dead: Bool[Tensor, " d_sae"],
    aux_k: int | None,
) -> Tensor | None:
    """Gao et al.'s AuxK loss: ``min(n_dead / aux_k, 1) * mean ||e - ê||^2`` with ``e = target - recon``
    (detached) and ``ê`` decoded (no ``b_dec``) from the ``min(aux_k, n_dead)`` largest dead pre-activations
    after a ReLU; ``aux_k`` defaults to ``d_out // 2``. None when no latent is dead."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return None
    k_aux = aux_k if aux_k is not None else max(1, target.shape[-1] // 2)
    scale = min(n_dead / k_aux, 1.0)
    k_aux = min(k_aux, n_dead)
    residual = (target - recon).detach()
    top = pre.masked_fill(~dead, -math.inf).topk(k_aux, dim=-1)
    aux_acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    return scale * (aux_acts @ sae.W_dec - residual).pow(2).sum(-1).mean()


def remove_parallel_grad(sae: SAE) -> None:
    """Remove the component of ``W_dec``'s gradient parallel to its (unit-norm) rows."""
    g, w = sae.W_dec.grad, sae.W_dec.data
    if g is not None:
        g -= (g * w).sum(-1, keepdim=True) * w
