"""Evaluate an SAE (or transcoder) in its model: ``lens.sae.evaluate(model, sae, tokens) -> dict``.

The SAE is spliced in with the model's public hooks only (``run_with_hooks(..., return_type="loss")``): the
activation at ``sae.hook_name`` is replaced by ``sae.reconstruct`` of it; for a transcoder the input is captured at
``hook_name`` and the activation at ``hook_name_out`` replaced. Nothing is attached to the model.

Metrics (SAELens's names and definitions, over every evaluated token; accumulated in float64):

- ``explained_variance`` = ``1 - sum ||x - x̂||^2 / sum ||x - mean(x)||^2``, the sums over tokens (and features),
  ``mean(x)`` the mean activation over the evaluated tokens. This is SAELens's ``explained_variance`` (trainer and
  evals: ``1 - mean per-token squared error / mean per-token ||x - mean||^2``), not its per-token
  ``explained_variance_legacy``;
- ``mse``: ``mean((x - x̂)^2)`` over tokens and features (SAELens's ``mse``);
- ``l0``: the mean number of latents with a non-zero activation per token;
- ``dead_fraction``: the fraction of latents that fire (activation > 0) on none of the tokens;
- ``dense_fraction``: the fraction of latents that fire on more than ``dense_threshold`` (default 10%) of them;
- ``ce_loss_clean``, ``ce_loss_spliced`` (SAE reconstruction in place), ``ce_loss_zero`` (activation set to 0):
  the model's mean next-token loss, averaged over batches weighted by their size;
- ``ce_loss_score`` = ``(zero - spliced) / (zero - clean)`` (SAELens's ``ce_loss_score``; NaN when zero == clean);
- ``tokens``: how many token positions the activation metrics cover.

BOS: with ``exclude_bos=True`` (the default) position 0 is left out of the activation metrics where it holds the
tokenizer's BOS token (its activation is the same in every context and, being large, would dominate them, as
SAELens's evals exclude special tokens), and it keeps the model's own activation in the spliced and zero runs;
``exclude_bos=False`` treats it like every other position. The losses always cover every prediction.

>>> metrics = lens.sae.evaluate(model, sae, tokens, batch_size=8)      # doctest: +SKIP
>>> metrics["explained_variance"], metrics["ce_loss_score"]             # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

import torch


def _as_tokens(tokens: Any) -> torch.Tensor:
    t = torch.as_tensor(tokens)
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2 or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"tokens must be integer ids [batch, pos], got {t.dtype} of shape {tuple(t.shape)}")
    if t.shape[1] < 2:
        raise ValueError(f"tokens need at least 2 positions for the loss, got shape {tuple(t.shape)}")
    return t.long()


@torch.no_grad()
def evaluate(
    model: Any,
    sae: Any,
    tokens: Any,
    batch_size: int = 8,
    exclude_bos: bool = True,
    dense_threshold: float = 0.1,
) -> dict[str, float]:
    """The metrics of the module docstring for ``sae`` on ``tokens`` (``[batch, pos]`` ids), ``batch_size``
    contexts per forward pass."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int")
    if not 0 <= dense_threshold <= 1:
        raise ValueError(f"dense_threshold={dense_threshold!r} must lie in [0, 1]")
    tokens = _as_tokens(tokens)
    hook_in = sae.hook_name
    hook_out = getattr(sae, "hook_name_out", None) or hook_in
    for h in {hook_in, hook_out}:
        if h not in model.hook_dict:
            raise ValueError(f"the SAE's hook {h!r} is not a hook of the model")
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    device = next(model.parameters()).device

    d_sae = sae.d_sae
    fires = torch.zeros(d_sae, dtype=torch.float64)
    sse = sum_sq = l0 = 0.0
    sum_x: torch.Tensor | None = None
    rows = 0
    losses = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start : start + batch_size].to(device)
        keep = torch.ones(batch.shape, dtype=torch.bool, device=device)
        if exclude_bos and bos is not None:
            keep[:, 0] = batch[:, 0] != bos
        seen: dict[str, torch.Tensor] = {}

        def capture(name, seen=seen):
            def fn(act, hook):
                seen[name] = act.detach().clone()

            return fn

        clean_hooks = [(hook_in, capture("in"))] + ([(hook_out, capture("out"))] if hook_out != hook_in else [])
        loss = model.run_with_hooks(batch, return_type="loss", fwd_hooks=clean_hooks)
        losses["clean"] += float(loss) * batch.shape[0]
        x_in = seen["in"]
        target = seen.get("out", x_in)

        recon = sae.reconstruct(x_in).to(target.dtype)
        acts = sae.encode(x_in)
        k = keep.reshape(-1)
        flat_t, flat_r = sae.flatten_input(target), sae.flatten_input(recon)  # hook_z SAEs: heads flattened
        t, r = flat_t.reshape(-1, flat_t.shape[-1])[k].double(), flat_r.reshape(-1, flat_r.shape[-1])[k].double()
        a = acts.reshape(-1, acts.shape[-1])[k]
        sse += (t - r).pow(2).sum().item()
        sum_sq += t.pow(2).sum().item()
        sum_x = t.sum(0) if sum_x is None else sum_x + t.sum(0)
        fired = a > 0
        l0 += fired.sum().item()
        fires += fired.sum(0).double().cpu()
        rows += t.shape[0]

        def replace_with(values, keep=keep):
            def fn(act, hook):
                mask = keep.reshape(*keep.shape, *([1] * (act.ndim - 2)))
                return torch.where(mask, values.to(act.dtype), act)

            return fn

        loss = model.run_with_hooks(batch, return_type="loss", fwd_hooks=[(hook_out, replace_with(recon))])
        losses["spliced"] += float(loss) * batch.shape[0]
        zero = torch.zeros_like(target)
        loss = model.run_with_hooks(batch, return_type="loss", fwd_hooks=[(hook_out, replace_with(zero))])
        losses["zero"] += float(loss) * batch.shape[0]

    n_ctx = tokens.shape[0]
    clean, spliced, zero = (losses[n] / n_ctx for n in ("clean", "spliced", "zero"))
    if rows == 0:
        ev = mse = l0_mean = float("nan")
        dead = dense = float("nan")
    else:
        d_out = sum_x.shape[0]
        sst = sum_sq - sum_x.pow(2).sum().item() / rows
        ev = 1 - sse / sst if sst > 0 else float("nan")
        mse = sse / (rows * d_out)
        l0_mean = l0 / rows
        dead = (fires == 0).double().mean().item()
        dense = (fires / rows > dense_threshold).double().mean().item()
    score = (zero - spliced) / (zero - clean) if zero != clean else float("nan")
    return {
        "explained_variance": ev,
        "mse": mse,
        "l0": l0_mean,
        "dead_fraction": dead,
        "dense_fraction": dense,
        "ce_loss_clean": clean,
        "ce_loss_spliced": spliced,
        "ce_loss_zero": zero,
        "ce_loss_score": score if math.isfinite(score) else float("nan"),
        "tokens": rows,
    }
