"""TransformerLens's ``head_detector`` API: score every head against a detection pattern for one prompt.

:mod:`lens.tools.head_detectors` is lens's batched detector (boolean targets, mean mass per query); this
module keeps TransformerLens's functions, arguments and scores so its notebooks run unchanged:
``detect_head(model, seq, detection_pattern, heads=None, cache=None, *, exclude_bos=False,
exclude_current_token=False, error_measure="mul") -> [n_layers, n_heads]``.

- ``detection_pattern``: a lower-triangular ``[pos, pos]`` tensor, or one of :data:`HEAD_NAMES`
  (built from the prompt's tokens by the ``get_*_detection_pattern`` functions; a list of prompts then
  gives the mean score over the prompts).
- ``error_measure="mul"``: the fraction of the head's attention that falls on the pattern,
  ``sum(A * P) / sum(A)``; ``"abs"``: ``1 - round(sum|A - P| / pos, 3)`` (1 is a perfect match).
  ``exclude_bos`` / ``exclude_current_token`` leave the first key column / the diagonal out (lens never
  edits the cached pattern to do so).
- ``heads``: only these heads (``[(layer, head), ...]`` or ``{layer: [heads]}``) are scored; the rest are -1.

Bad input raises ``ValueError`` (TransformerLens: ``AssertionError``).

>>> scores = detect_head(model, "one two three one two three", "induction_head")   # doctest: +SKIP
>>> scores.shape                                                                     # doctest: +SKIP
torch.Size([2, 8])
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = [
    "ERROR_MEASURES",
    "HEAD_NAMES",
    "compute_head_attention_similarity_score",
    "detect_head",
    "get_duplicate_token_head_detection_pattern",
    "get_induction_head_detection_pattern",
    "get_previous_token_head_detection_pattern",
    "get_supported_heads",
]

HEAD_NAMES = ("previous_token_head", "duplicate_token_head", "induction_head")
ERROR_MEASURES = ("mul", "abs")


def _row(tokens: Tensor) -> Int[Tensor, " pos"]:
    tokens = torch.as_tensor(tokens)
    if tokens.ndim == 2 and tokens.shape[0] == 1:
        tokens = tokens[0]
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be [pos] or [1, pos], got shape {tuple(tokens.shape)}")
    return tokens.cpu()


def get_previous_token_head_detection_pattern(tokens: Int[Tensor, "1 pos"]) -> Float[Tensor, "pos pos"]:
    """1 where query ``q`` attends to key ``q - 1``."""
    n = _row(tokens).shape[0]
    return torch.ones(n, n).tril(-1).triu(-1)


def get_duplicate_token_head_detection_pattern(tokens: Int[Tensor, "1 pos"]) -> Float[Tensor, "pos pos"]:
    """1 where key ``k < q`` holds the same token as query ``q``."""
    row = _row(tokens)
    return (row[:, None] == row[None, :]).float().tril(-1)


def get_induction_head_detection_pattern(tokens: Int[Tensor, "1 pos"]) -> Float[Tensor, "pos pos"]:
    """1 where key ``k`` follows an earlier copy of query ``q``'s token (the duplicate pattern shifted right)."""
    dup = get_duplicate_token_head_detection_pattern(tokens)
    out = torch.zeros_like(dup)
    out[:, 1:] = dup[:, :-1]
    return out.tril()


_PATTERNS = {
    "previous_token_head": get_previous_token_head_detection_pattern,
    "duplicate_token_head": get_duplicate_token_head_detection_pattern,
    "induction_head": get_induction_head_detection_pattern,
}


def get_supported_heads() -> None:
    """Print the names ``detect_head`` accepts as ``detection_pattern``."""
    print(f"Supported heads: {list(HEAD_NAMES)}")


def compute_head_attention_similarity_score(
    attention_pattern: Float[Tensor, "q k"],
    detection_pattern: Float[Tensor, "q k"],
    *,
    exclude_bos: bool,
    exclude_current_token: bool,
    error_measure: str,
) -> float:
    """One head's score (see the module docstring); ``attention_pattern`` is not modified."""
    if attention_pattern.ndim != 2 or attention_pattern.shape[0] != attention_pattern.shape[1]:
        raise ValueError(f"the attention pattern must be square [q, k], got shape {tuple(attention_pattern.shape)}")
    if error_measure not in ERROR_MEASURES:
        raise ValueError(f"error_measure={error_measure!r}; valid values are {ERROR_MEASURES}")
    det = detection_pattern.to(attention_pattern.device, attention_pattern.dtype)
    if error_measure == "mul":
        pattern = attention_pattern.clone()
        if exclude_bos:
            pattern[:, 0] = 0
        if exclude_current_token:
            pattern.fill_diagonal_(0)
        return ((pattern * det).sum() / pattern.sum()).item()
    diff = (attention_pattern - det).abs()
    if bool((diff.triu(1) != 0).any()):
        raise ValueError("error_measure='abs' needs a lower-triangular attention and detection pattern")
    if exclude_bos:
        diff[:, 0] = 0
    if exclude_current_token:
        diff.fill_diagonal_(0)
    return 1 - round((diff.mean() * len(diff)).item(), 3)


def _layer_heads(heads: Any, n_layers: int, n_heads: int) -> dict[int, list[int]]:
    if heads is None:
        return {layer: list(range(n_heads)) for layer in range(n_layers)}
    pairs = [(layer, h) for layer, hs in heads.items() for h in hs] if isinstance(heads, dict) else list(heads)
    out: dict[int, list[int]] = {}
    for layer, head in pairs:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(f"head ({layer}, {head}) is outside the model's {n_layers} layers x {n_heads} heads")
        out.setdefault(layer, []).append(head)
    return out


def detect_head(
    model: Any,
    seq: str | list[str],
    detection_pattern: Tensor | str,
    heads: list[tuple[int, int]] | dict[int, list[int]] | None = None,
    cache: Any = None,
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    error_measure: str = "mul",
) -> Float[Tensor, "layer head"]:
    """Score every head (or ``heads``) of ``model`` on ``seq`` against ``detection_pattern`` (module docstring).

    >>> detect_head(model, "a b c a b c", "previous_token_head", error_measure="abs")   # doctest: +SKIP
    """
    cfg = model.cfg
    if error_measure not in ERROR_MEASURES:
        raise ValueError(f"error_measure={error_measure!r}; valid values are {ERROR_MEASURES}")
    if isinstance(detection_pattern, str):
        if detection_pattern not in HEAD_NAMES:
            raise ValueError(f"detection_pattern={detection_pattern!r} is not one of {list(HEAD_NAMES)}")
        if isinstance(seq, list):
            kw = dict(exclude_bos=exclude_bos, exclude_current_token=exclude_current_token)
            scores = [detect_head(model, s, detection_pattern, heads, error_measure=error_measure, **kw) for s in seq]
            return torch.stack(scores).mean(0)
    tokens = model.to_tokens(seq)
    if tokens.shape[0] != 1:
        raise ValueError(f"a detection pattern tensor is for one prompt; got {tokens.shape[0]} prompts")
    pos = tokens.shape[-1]
    if not 1 < pos < cfg.n_ctx:
        raise ValueError(f"the prompt has {pos} tokens; it needs more than 1 and fewer than n_ctx={cfg.n_ctx}")
    if isinstance(detection_pattern, str):
        detection_pattern = _PATTERNS[detection_pattern](tokens)
    det = torch.as_tensor(detection_pattern)
    if tuple(det.shape) != (pos, pos) or bool((det.triu(1) != 0).any()):
        raise ValueError(
            f"the detection pattern must be a lower-triangular [pos, pos] matrix with pos={pos}; got shape "
            f"{tuple(det.shape)}"
        )
    if error_measure == "mul" and not set(det.unique().tolist()) <= {0, 1}:
        warnings.warn("a detection pattern with values other than 0 or 1 with error_measure='mul'", stacklevel=2)
    layer2heads = _layer_heads(heads, cfg.n_layers, cfg.n_heads)
    if cache is None:
        names = [f"blocks.{layer}.attn.hook_pattern" for layer in layer2heads]
        _, cache = model.run_with_cache(tokens, names_filter=names, remove_batch_dim=True)
    matches = -torch.ones(cfg.n_layers, cfg.n_heads, dtype=cfg.dtype)
    for layer, layer_heads in layer2heads.items():
        patterns = cache["pattern", layer]
        if patterns.ndim == 4:  # a cache with its batch dim
            if patterns.shape[0] != 1:
                raise ValueError(f"the cache holds {patterns.shape[0]} prompts; detect_head scores one")
            patterns = patterns[0]
        for head in layer_heads:
            matches[layer, head] = compute_head_attention_similarity_score(
                patterns[head],
                det,
                exclude_bos=exclude_bos,
                exclude_current_token=exclude_current_token,
                error_measure=error_measure,
            )
    return matches
