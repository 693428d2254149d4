"""Token-id helpers with TransformerLens's names: positions under padding, BOS handling, padding masks.

Tokenizers are duck-typed: a lens :class:`lens.tokenizer.Tokenizer` or a ``transformers`` tokenizer
(``pad_token_id``, ``bos_token_id``, ``padding_side``; ``bos_token`` for the string helpers).

>>> get_offset_position_ids(0, torch.tensor([[0, 1, 1]]))
tensor([[0, 0, 1]])
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from lens.utilities.tensors import get_cumsum_along_dim

__all__ = [
    "get_attention_mask",
    "get_input_with_manually_prepended_bos",
    "get_offset_position_ids",
    "get_tokenizer_with_bos",
    "get_tokens_with_bos_removed",
]


def get_offset_position_ids(
    past_kv_pos_offset: int, attention_mask: Int[Tensor, "batch offset_pos"]
) -> Int[Tensor, "batch pos"]:
    """Position ids that start at 0 on each row's first real token (left padding), from ``past_kv_pos_offset`` on.

    ``attention_mask`` covers the cached positions and the new ones; padding before the first real token
    gets position 0 (any valid index: it is masked anyway).

    >>> get_offset_position_ids(1, torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]))
    tensor([[0, 0, 1],
            [1, 2, 3]])
    """
    if attention_mask.ndim != 2:
        raise ValueError(f"attention_mask must be [batch, pos], got shape {tuple(attention_mask.shape)}")
    if isinstance(past_kv_pos_offset, bool) or not 0 <= past_kv_pos_offset <= attention_mask.shape[1]:
        raise ValueError(
            f"past_kv_pos_offset must be an int in [0, {attention_mask.shape[1]}], got {past_kv_pos_offset!r}"
        )
    positions = attention_mask.long().cumsum(dim=1) - 1
    return positions.clamp_min(0)[:, past_kv_pos_offset:]


def _padding_side(tokenizer: Any) -> str:
    side = getattr(tokenizer, "padding_side", "right")
    if side not in ("left", "right"):
        raise ValueError(f"tokenizer.padding_side must be 'left' or 'right', got {side!r}")
    return side


def get_attention_mask(tokenizer: Any, tokens: Int[Tensor, "batch pos"], prepend_bos: bool) -> Int[Tensor, "batch pos"]:
    """1 on real tokens, 0 on padding, read from the ids: only the leading pads (``padding_side="left"``)
    or the trailing pads (``"right"``) count as padding, so a pad id inside the text stays attended.

    When BOS and pad share an id and ``prepend_bos``, the last leading "pad" is the BOS and is kept.
    No tokenizer (None) or no pad id: all ones.

    >>> get_attention_mask(tok, torch.tensor([[0, 0, 5, 0]]), prepend_bos=False)   # pad 0, left  # doctest: +SKIP
    tensor([[0, 0, 1, 1]])
    """
    mask = torch.ones_like(tokens)
    pad_id = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    if pad_id is None:
        return mask
    not_pad = tokens.ne(pad_id)
    if _padding_side(tokenizer) == "right":
        mask[get_cumsum_along_dim(not_pad, -1, reverse=True) == 0] = 0
        return mask
    leading = get_cumsum_along_dim(not_pad, -1) == 0
    mask[leading] = 0
    if prepend_bos and getattr(tokenizer, "bos_token_id", None) == pad_id:
        bos_at = leading.sum(-1) - 1  # -1 (no leading pad) wraps to the last column, which is already 1
        mask[torch.arange(mask.shape[0]), bos_at] = 1
    return mask


def _bos_string(tokenizer: Any) -> str:
    bos = getattr(tokenizer, "bos_token", None)
    if isinstance(bos, str):
        return bos
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is not None and hasattr(tokenizer, "token_strings"):
        return tokenizer.token_strings([bos_id])[0]
    raise ValueError("this tokenizer has no BOS token to prepend")


def get_input_with_manually_prepended_bos(tokenizer: Any, input: str | list[str]) -> str | list[str]:
    """The text with the BOS token's string in front (each string of a list).

    >>> get_input_with_manually_prepended_bos(hf_gpt2_tokenizer, "hi")   # doctest: +SKIP
    '<|endoftext|>hi'
    """
    bos = _bos_string(tokenizer)
    if isinstance(input, str):
        return bos + input
    if not all(isinstance(s, str) for s in input):
        raise TypeError("input must be a string or a list of strings")
    return [bos + s for s in input]


def get_tokens_with_bos_removed(tokenizer: Any, tokens: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos_minus_1"]:
    """Drop each row's BOS: the first column with right padding; with left padding, the BOS after the pads.

    With left padding the BOS is found as the first ``bos_token_id`` of the row, or, when BOS and pad
    share an id, as the last of the leading pads.

    >>> get_tokens_with_bos_removed(tok, torch.tensor([[0, 0, 1, 7]]))   # left, pad 0, bos 1  # doctest: +SKIP
    tensor([[0, 0, 7]])
    """
    if tokens.ndim != 2 or tokens.shape[-1] == 0:
        raise ValueError(f"tokens must be [batch, pos] with pos >= 1, got shape {tuple(tokens.shape)}")
    if _padding_side(tokenizer) == "right":
        return tokens[..., 1:]
    bos_id, pad_id = tokenizer.bos_token_id, getattr(tokenizer, "pad_token_id", None)
    if bos_id == pad_id:
        leading = get_cumsum_along_dim(tokens.ne(pad_id), -1) == 0
        bos_at = leading.sum(-1) - 1
    else:
        is_bos = tokens == bos_id
        bos_at = is_bos.int().argmax(-1)
    if bool((bos_at < 0).any()):
        raise ValueError("a row has no BOS token to remove")
    keep = torch.arange(tokens.shape[-1], device=tokens.device)[None, :] != bos_at[:, None]
    return tokens[keep].view(tokens.shape[0], tokens.shape[1] - 1)


def get_tokenizer_with_bos(tokenizer: Any) -> Any:
    """A ``transformers`` tokenizer that adds BOS itself (``add_bos_token=True``), as TransformerLens keeps one
    for tokenizers (e.g. Llama's) whose tokenization changes when BOS is added by the tokenizer.

    Returns ``tokenizer`` when it already adds BOS, or is a lens Tokenizer (``to_tokens(prepend_bos=...)``
    adds BOS there); otherwise reloads it by its ``name_or_path`` with ``add_bos_token=True`` (a local
    directory, or the Hub with ``HF_TOKEN``).

    >>> get_tokenizer_with_bos(AutoTokenizer.from_pretrained("/models/llama")).add_bos_token   # doctest: +SKIP
    True
    """
    init_kwargs = getattr(tokenizer, "init_kwargs", None)
    if init_kwargs is None:  # not a transformers tokenizer
        return tokenizer
    init_kwargs = copy.deepcopy(init_kwargs)
    path = init_kwargs.pop("name_or_path", None) or getattr(tokenizer, "name_or_path", None)
    add_bos = init_kwargs.pop("add_bos_token", None)
    if add_bos is None:
        add_bos = getattr(tokenizer, "add_bos_token", False)
    if add_bos:
        return tokenizer
    if not path:
        raise ValueError("this tokenizer has no name_or_path to reload it with add_bos_token=True")
    from transformers import AutoTokenizer

    token = os.environ.get("HF_TOKEN") or None
    return AutoTokenizer.from_pretrained(path, add_bos_token=True, token=token, **init_kwargs)
