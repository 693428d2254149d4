"""Score every attention head for previous-token, duplicate-token and induction behaviour.

Why: these three head types are the usual first landmarks of a circuit (an induction circuit is a
previous-token head feeding an induction head). Each detector is a boolean "target" pattern
``[batch, query, key]`` built from the tokens; a head's score is the attention mass it puts on the
targets, averaged over the query positions that have at least one target, so it lies in ``[0, 1]``
(1 = all attention on the targets). Results are ``[n_layers, n_heads]``.

- previous token: query ``q`` -> key ``q - 1``.
- duplicate token: query ``q`` -> earlier keys ``k < q`` holding the same token.
- induction: query ``q`` -> keys ``k < q`` whose *previous* token equals token ``q`` (the token that
  followed an earlier occurrence of the current one).

Induction is best measured on repeated random tokens (:func:`repeated_tokens`), where a trained
model's induction heads light up on the second half.

>>> tokens = repeated_tokens(model, seq_len=20, batch=4, seed=0)
>>> scores = detect_heads(model, tokens)             # {"previous_token": [L, H], ...}
>>> scores["induction"].argmax()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = [
    "DETECTORS",
    "detect_heads",
    "duplicate_token_pattern",
    "duplicate_token_scores",
    "head_scores",
    "induction_pattern",
    "induction_scores",
    "previous_token_pattern",
    "previous_token_scores",
    "repeated_tokens",
]


def previous_token_pattern(tokens: Int[Tensor, "batch pos"]) -> Bool[Tensor, "batch pos pos"]:
    """Targets ``q -> q - 1``.

    >>> previous_token_pattern(torch.tensor([[5, 6, 7]]))[0].int().tolist()
    [[0, 0, 0], [1, 0, 0], [0, 1, 0]]
    """
    batch, pos = tokens.shape
    eye = torch.eye(pos, dtype=torch.bool, device=tokens.device)
    return torch.roll(eye, shifts=-1, dims=1).tril(-1).expand(batch, pos, pos)


def duplicate_token_pattern(tokens: Int[Tensor, "batch pos"]) -> Bool[Tensor, "batch pos pos"]:
    """Targets ``q -> k`` for earlier ``k < q`` with ``tokens[k] == tokens[q]``.

    >>> duplicate_token_pattern(torch.tensor([[5, 6, 5]]))[0].int().tolist()
    [[0, 0, 0], [0, 0, 0], [1, 0, 0]]
    """
    same = tokens[:, :, None] == tokens[:, None, :]
    return same.tril(-1)


def induction_pattern(tokens: Int[Tensor, "batch pos"]) -> Bool[Tensor, "batch pos pos"]:
    """Targets ``q -> k`` for ``k < q`` with ``tokens[k - 1] == tokens[q]`` (what followed the last time).

    >>> induction_pattern(torch.tensor([[5, 6, 5]]))[0].int().tolist()
    [[0, 0, 0], [0, 0, 0], [0, 1, 0]]
    """
    prev = torch.roll(tokens, shifts=1, dims=1)  # prev[:, k] = tokens[:, k - 1]
    match = tokens[:, :, None] == prev[:, None, :]
    match[:, :, 0] = False  # key 0 has no previous token
    return match.tril(-1)


DETECTORS: dict[str, Callable[[Tensor], Tensor]] = {
    "previous_token": previous_token_pattern,
    "duplicate_token": duplicate_token_pattern,
    "induction": induction_pattern,
}


def repeated_tokens(
    model: Any,
    seq_len: int,
    batch: int = 1,
    seed: int = 0,
    prepend_bos: bool = True,
    token_ids: Sequence[int] | Tensor | None = None,
) -> Int[Tensor, "batch total"]:
    """Random tokens repeated once: ``[bos] + r + r`` with ``r`` of length ``seq_len`` per row.

    Tokens are drawn uniformly from ``token_ids`` (default: the vocabulary without the tokenizer's
    special tokens; pass e.g. printable characters for a byte-level model whose training text never
    used the other bytes); BOS is the tokenizer's (no BOS without a tokenizer that has one). Seeded.

    >>> repeated_tokens(model, seq_len=10, batch=2).shape
    torch.Size([2, 21])
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    tok = getattr(model, "tokenizer", None)
    special = set() if tok is None else {tok.bos_token_id, tok.pad_token_id, *tok.eos_token_ids} - {None}
    if token_ids is None:
        allowed = torch.tensor([i for i in range(model.cfg.d_vocab) if i not in special])
    else:
        allowed = torch.as_tensor(token_ids, dtype=torch.long).flatten()
        if allowed.numel() == 0 or int(allowed.min()) < 0 or int(allowed.max()) >= model.cfg.d_vocab:
            raise ValueError(f"token_ids must be a non-empty set of ids in [0, d_vocab={model.cfg.d_vocab})")
    gen = torch.Generator().manual_seed(seed)
    half = allowed[torch.randint(0, len(allowed), (batch, seq_len), generator=gen)]
    out = torch.cat([half, half], dim=1)
    bos = None if tok is None else tok.bos_token_id
    if prepend_bos and bos is not None:
        out = torch.cat([torch.full((batch, 1), bos), out], dim=1)
    return out.to(model.embed.weight.device)


def _patterns(model: Any, tokens: Tensor, cache: Any) -> Float[Tensor, "layer batch head q k"]:
    n = model.cfg.n_layers
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(n)]
    if cache is None:
        _, cache = model.run_with_cache(tokens, names_filter=names)
    pats = []
    for name in names:
        p = cache[name]
        pats.append(p if getattr(cache, "has_batch_dim", True) else p[None])
    pats = torch.stack(pats)
    if pats.shape[-1] != tokens.shape[-1] or pats.shape[1] != tokens.shape[0]:
        raise ValueError(f"the cached patterns {tuple(pats.shape[1:])} do not match tokens {tuple(tokens.shape)}")
    return pats


def _tokens(model: Any, tokens: Any) -> Tensor:
    if isinstance(tokens, (str, list)):
        tokens = model.to_tokens(tokens)
    if not isinstance(tokens, Tensor):
        raise TypeError(f"tokens must be a [batch, pos] tensor of ids or text, got {type(tokens).__name__}")
    return model.check_tokens(tokens)


def head_scores(
    model: Any,
    tokens: Int[Tensor, "batch pos"] | str | list[str],
    detection_pattern: Bool[Tensor, "batch q k"] | Bool[Tensor, "q k"],
    cache: Any = None,
) -> Float[Tensor, "layer head"]:
    """Mean attention mass on ``detection_pattern``'s targets, over queries that have a target.

    ``cache``: reuse patterns from a ``run_with_cache`` on the same tokens (else one forward runs).

    >>> head_scores(model, tokens, previous_token_pattern(tokens)).shape     # [n_layers, n_heads]
    """
    tokens = _tokens(model, tokens)
    det = torch.as_tensor(detection_pattern, device=tokens.device).bool()
    if det.ndim == 2:
        det = det.expand(tokens.shape[0], *det.shape)
    if tuple(det.shape) != (tokens.shape[0], tokens.shape[1], tokens.shape[1]):
        raise ValueError(f"detection_pattern has shape {tuple(det.shape)}, expected [batch, pos, pos] for the tokens")
    has_target = det.any(-1)  # [batch, q]
    if not bool(has_target.any()):
        raise ValueError("the detection pattern has no targets for these tokens (e.g. no repeated tokens)")
    pats = _patterns(model, tokens, cache).float()  # [layer, batch, head, q, k]
    mass = (pats * det[None, :, None].float()).sum(-1)  # [layer, batch, head, q]
    mass = mass * has_target[None, :, None].float()
    return mass.sum(dim=(1, 3)) / has_target.sum()


def detect_heads(
    model: Any,
    tokens: Int[Tensor, "batch pos"] | str | list[str],
    kinds: Sequence[str] = ("previous_token", "duplicate_token", "induction"),
    cache: Any = None,
) -> dict[str, Float[Tensor, "layer head"]]:
    """Scores of several detectors from one forward pass: ``{kind: [n_layers, n_heads]}``.

    >>> detect_heads(model, repeated_tokens(model, 20, batch=4))["induction"].shape
    """
    tokens = _tokens(model, tokens)
    unknown = [k for k in kinds if k not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector(s) {unknown}; choose from {sorted(DETECTORS)}")
    if cache is None:
        names = [f"blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers)]
        _, cache = model.run_with_cache(tokens, names_filter=names)
    return {k: head_scores(model, tokens, DETECTORS[k](tokens), cache=cache) for k in kinds}


def previous_token_scores(model: Any, tokens: Any, cache: Any = None) -> Float[Tensor, "layer head"]:
    """Previous-token score per head (attention from ``q`` to ``q - 1``).

    >>> previous_token_scores(model, tokens).shape
    """
    tokens = _tokens(model, tokens)
    return head_scores(model, tokens, previous_token_pattern(tokens), cache)


def duplicate_token_scores(model: Any, tokens: Any, cache: Any = None) -> Float[Tensor, "layer head"]:
    """Duplicate-token score per head (attention to earlier copies of the current token).

    >>> duplicate_token_scores(model, repeated_tokens(model, 20)).shape
    """
    tokens = _tokens(model, tokens)
    return head_scores(model, tokens, duplicate_token_pattern(tokens), cache)


def induction_scores(model: Any, tokens: Any, cache: Any = None) -> Float[Tensor, "layer head"]:
    """Induction score per head (attention to the token after an earlier copy of the current one).

    >>> induction_scores(model, repeated_tokens(model, 20, batch=4)).shape
    """
    tokens = _tokens(model, tokens)
    return head_scores(model, tokens, induction_pattern(tokens), cache)
