"""The logit lens: what would the model predict if it stopped after each layer?

Why: decoding the residual stream after every layer through the final norm and the unembedding
shows where a prediction forms. :func:`logit_lens` takes the accumulated residual stream
(``cache.accumulated_resid``: ``"0_pre"`` ... ``"final_post"``), runs each stream through
``ln_final`` (with its own statistics, weight and bias: the real module) and ``unembed`` (``W_U``
and ``b_U``), and keeps the top-k tokens and probabilities per layer and position. The last row
(``"final_post"``) is exactly the model's own prediction.

>>> lens_result = logit_lens(model, "The Eiffel Tower is in", top_k=3)
>>> lens_result.predictions[-1][-1]          # the model's top next-token string at the last position
>>> lens_result.figure().write_html("logit_lens.html")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["LogitLensResult", "logit_lens"]


@dataclass
class LogitLensResult:
    """Per-layer, per-position decoded predictions for one prompt (see :func:`logit_lens`).

    ``top_tokens`` / ``top_probs`` are ``[layer, pos, k]`` (``layer`` runs over ``labels``),
    ``target_probs`` ``[layer, pos]`` is the probability given to the actual next token (NaN at the
    last position), ``predictions[layer][pos]`` the decoded top-1 token (its id without a tokenizer).
    ``logits`` ``[layer, pos, d_vocab]`` is kept only with ``keep_logits=True``.
    """

    labels: list[str]
    tokens: Int[Tensor, "pos"]
    str_tokens: list[str]
    top_tokens: Int[Tensor, "layer pos k"]
    top_probs: Float[Tensor, "layer pos k"]
    target_probs: Float[Tensor, "layer pos"]
    predictions: list[list[str]]
    logits: Float[Tensor, "layer pos d_vocab"] | None = None

    def figure(self, title: str | None = None):
        """Plotly table of top-1 predictions coloured by probability (:func:`lens.plot.logit_lens`).

        >>> logit_lens(model, tokens).figure(title="logit lens")
        """
        from lens.tools import plot

        return plot.logit_lens(
            self.predictions, self.top_probs[..., 0], self.str_tokens, layer_labels=self.labels, title=title
        )


@torch.no_grad()
def logit_lens(
    model: Any,
    input: Int[Tensor, "batch pos"] | str | list[str],
    top_k: int = 5,
    incl_mid: bool = False,
    batch_index: int = 0,
    cache: Any = None,
    keep_logits: bool = False,
) -> LogitLensResult:
    """Decode the residual stream after every layer (and ``resid_mid`` with ``incl_mid``).

    Args:
        input: token ids ``[batch, pos]`` / ``[pos]`` or text (tokenized with the model's tokenizer).
        top_k: how many top tokens to keep per layer and position.
        batch_index: which prompt of the batch to decode.
        cache: an ActivationCache of ``input`` holding the residual streams (else one forward runs).
        keep_logits: also return the full ``[layer, pos, d_vocab]`` logits.

    >>> res = logit_lens(model, tokens, top_k=3)
    >>> res.top_tokens.shape        # [n_layers + 1, pos, 3]
    """
    if isinstance(input, (str, list)):
        input = model.to_tokens(input)
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be token ids or text, got {type(input).__name__}")
    tokens = model.check_tokens(input)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= model.cfg.d_vocab:
        raise ValueError(f"top_k={top_k!r} must be an int in [1, d_vocab={model.cfg.d_vocab}]")
    if not -tokens.shape[0] <= batch_index < tokens.shape[0]:
        raise ValueError(f"batch_index={batch_index} is out of range for a batch of {tokens.shape[0]}")
    if cache is None:
        n = model.cfg.n_layers
        names = [f"blocks.{i}.hook_{s}" for i in range(n) for s in ("resid_pre", "resid_mid", "resid_post")]
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    stack, labels = cache.accumulated_resid(incl_mid=incl_mid, return_labels=True)
    stack = stack[:, batch_index] if cache.has_batch_dim else stack  # [layer, pos, d_model]
    row = tokens[batch_index]

    top_tokens, top_probs, target_probs, all_logits = [], [], [], []
    for resid in stack:  # one layer at a time: [pos, d_vocab] logits, not [layer, pos, d_vocab]
        normed = resid if model.ln_final is None else model.ln_final(resid)
        logits = model.unembed(normed)
        probs = logits.float().softmax(-1)
        p, t = probs.topk(top_k, dim=-1)
        top_tokens.append(t)
        top_probs.append(p)
        nxt = probs[:-1].gather(-1, row[1:, None])[:, 0]
        target_probs.append(torch.cat([nxt, nxt.new_full((1,), float("nan"))]))
        if keep_logits:
            all_logits.append(logits)
    top_tokens_t = torch.stack(top_tokens)
    has_tok = getattr(model, "tokenizer", None) is not None
    decode = (lambda ids: model.tokenizer.token_strings(ids)) if has_tok else (lambda ids: [str(i) for i in ids])
    predictions = [decode(layer[:, 0].tolist()) for layer in top_tokens_t]
    return LogitLensResult(
        labels=labels,
        tokens=row,
        str_tokens=decode(row.tolist()),
        top_tokens=top_tokens_t,
        top_probs=torch.stack(top_probs),
        target_probs=torch.stack(target_probs),
        predictions=predictions,
        logits=torch.stack(all_logits) if keep_logits else None,
    )
