"""Argument checking, prompt preparation and output formatting for ``generate``.

Everything that can be wrong with a ``generate`` call is caught here, before any compute: sampling
settings, beam settings, an empty prompt, a missing EOS token, and a prompt plus ``max_new_tokens``
longer than the model's context (Lit-GPT style, with the numbers). The result is a
:class:`GenerationPlan` that the decode loops (``generate.py``, ``beam.py``) follow.

>>> plan = make_plan(model, "Hello", max_new_tokens=5)
>>> plan.tokens.shape, plan.max_new
(torch.Size([1, 6]), 5)
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from lens.generation.kv_cache import KV_CACHE_DTYPES
from lens.generation.sampling import SamplingConfig

RETURN_TYPES = ("input", "str", "tokens")


@dataclass
class GenerationPlan:
    """A validated ``generate`` call: the left-padded prompt and every decoding setting."""

    tokens: Int[Tensor, "batch prompt"]
    mask: Bool[Tensor, "batch prompt"] | None  # None when no row is padded
    max_new: int
    sampling: SamplingConfig
    eos: Int[Tensor, " n_eos"] | None  # None unless stopping at EOS
    fill_id: int  # written after a row has finished (pad if the tokenizer has one, else the first EOS)
    generator: torch.Generator | None
    use_cache: bool
    kv_cache_dtype: str | None
    num_beams: int
    length_penalty: float
    early_stopping: bool | str
    output_kind: str  # "str", "strs", "tokens" or "tokens1d"
    strip_bos: bool  # a BOS that generate itself prepended (left out of decoded strings)
    output_logprobs: bool
    verbose: bool

    @property
    def prompt_len(self) -> int:
        return self.tokens.shape[1]


def _int_arg(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_context(cfg: Any, prompt_len: int, max_new_tokens: int | None) -> int:
    """The number of new tokens to generate; ``ValueError`` (with the numbers) if they do not fit.

    ``max_new_tokens=None`` fills the rest of the context.

    >>> check_context(cfg, 100, 2000)  # n_ctx 2048
    Traceback (most recent call last):
    ValueError: the prompt has 100 tokens and max_new_tokens=2000 needs 2100 positions, but ...
    """
    n_ctx = cfg.n_ctx
    fit = max(n_ctx - prompt_len, 0)
    trained = getattr(cfg, "n_ctx_trained", None)
    override = (
        f", or load with context_size_override (trained maximum {trained})"
        if trained is not None and trained > n_ctx
        else ""
    )
    if max_new_tokens is None:
        if fit == 0:
            raise ValueError(
                f"the prompt has {prompt_len} tokens, but the model's context is {n_ctx}, so no new token fits "
                f"(max_new_tokens=None fills the rest of the context); shorten the prompt{override}"
            )
        return fit
    if prompt_len + max_new_tokens > n_ctx:
        lower = " or lower max_new_tokens" if not override else ", lower max_new_tokens"
        raise ValueError(
            f"the prompt has {prompt_len} tokens and max_new_tokens={max_new_tokens} needs "
            f"{prompt_len + max_new_tokens} positions, but the model's context is {n_ctx} (at most {fit} new "
            f"tokens fit); shorten the prompt{lower}{override}"
        )
    return max_new_tokens


def _eos_ids(model: Any, eos_token_id: int | list[int] | None) -> list[int]:
    if eos_token_id is None:
        tokenizer = getattr(model, "tokenizer", None)
        return list(tokenizer.eos_token_ids) if tokenizer is not None else []
    ids = [eos_token_id] if isinstance(eos_token_id, numbers.Integral) else eos_token_id
    if isinstance(eos_token_id, bool) or not isinstance(ids, (list, tuple)) or not ids:
        raise TypeError(f"eos_token_id must be an int or a non-empty list of ints, got {eos_token_id!r}")
    out = []
    for i in ids:
        i = _int_arg("eos_token_id", i, 0)
        if i >= model.cfg.d_vocab:
            raise ValueError(f"eos_token_id {i} is outside the vocabulary [0, d_vocab={model.cfg.d_vocab})")
        out.append(i)
    return out


def _left_align(tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Move right padding to the left (each row's real tokens end at the last column)."""
    width = tokens.shape[1]
    shift = width - mask.long().sum(-1, keepdim=True)
    idx = (torch.arange(width, device=tokens.device) - shift) % width
    return tokens.gather(1, idx), mask.gather(1, idx)


def _prompt(
    model: Any, input: Any, attention_mask: Tensor | None, prepend_bos: bool | None, padding_side: str
) -> tuple[Tensor, Tensor | None, str, bool]:
    """(tokens, mask | None, output kind, strip_bos) with any padding on the left."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if isinstance(input, str) or (isinstance(input, list) and all(isinstance(s, str) for s in input)):
        if isinstance(input, list) and not input:
            raise ValueError("the prompt list is empty; pass at least one prompt")
        if attention_mask is not None:
            raise ValueError("attention_mask is only for token inputs; string prompts build their own")
        bos = model._resolve_bos(prepend_bos)
        tokens, mask = model.to_tokens(input, prepend_bos=bos, padding_side=padding_side, return_attention_mask=True)
        kind = "str" if isinstance(input, str) else "strs"
        strip_bos = bool(bos)
    elif isinstance(input, Tensor):
        if input.ndim not in (1, 2):
            raise ValueError(f"token input must be [pos] or [batch, pos], got shape {tuple(input.shape)}")
        kind = "tokens1d" if input.ndim == 1 else "tokens"
        tokens, mask, strip_bos = input, attention_mask, False
    else:
        raise TypeError(f"input must be a string, a list of strings or a token tensor, got {type(input).__name__}")
    if tokens.ndim == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.numel() == 0:
        raise ValueError("the prompt is empty; generate needs at least one token to condition on")
    tokens = model._check_tokens(tokens).to(model.embed.weight.device)
    if mask is not None:
        mask = model._check_mask(mask, *tokens.shape).to(tokens.device).bool()
        if padding_side == "right" and kind in ("str", "strs"):
            tokens, mask = _left_align(tokens, mask)
        empty = (~mask.any(-1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"prompt(s) {empty} are empty; generate needs at least one token per prompt")
        if bool((mask[:, 1:] < mask[:, :-1]).any()):
            raise ValueError("generate needs left padding: attention_mask must be 0s (padding) followed by 1s")
        if bool(mask.all()):
            mask = None
    return tokens, mask, kind, strip_bos


def make_plan(
    model: Any,
    input: Any,
    max_new_tokens: int | None = None,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    stop_at_eos: bool = True,
    eos_token_id: int | list[int] | None = None,
    prepend_bos: bool | None = None,
    padding_side: str = "left",
    attention_mask: Tensor | None = None,
    seed: int | None = None,
    use_past_kv_cache: bool = True,
    kv_cache_dtype: str | None = None,
    return_type: str = "input",
    output_logprobs: bool = False,
    verbose: bool = False,
) -> GenerationPlan:
    """Validate a ``generate`` call and prepare its prompt; raises before any model compute."""
    sampling = SamplingConfig(
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
    )
    num_beams = _int_arg("num_beams", num_beams, 1)
    if num_beams > 1 and do_sample:
        raise ValueError("beam sampling (num_beams > 1 with do_sample=True) is not supported; use one or the other")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, numbers.Real):
        raise TypeError(f"length_penalty must be a real number, got {length_penalty!r}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if max_new_tokens is not None:
        max_new_tokens = _int_arg("max_new_tokens", max_new_tokens, 0)
    if return_type not in RETURN_TYPES:
        raise ValueError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}")
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {kv_cache_dtype!r}")
    if kv_cache_dtype is not None and not use_past_kv_cache:
        raise ValueError(f"kv_cache_dtype={kv_cache_dtype!r} needs use_past_kv_cache=True")
    for name, flag in (
        ("stop_at_eos", stop_at_eos),
        ("use_past_kv_cache", use_past_kv_cache),
        ("output_logprobs", output_logprobs),
        ("verbose", verbose),
    ):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    if seed is not None:
        seed = _int_arg("seed", seed, 0)
    eos = _eos_ids(model, eos_token_id)
    if stop_at_eos and not eos:
        raise ValueError(
            "stop_at_eos=True but no EOS token is known (the model has no tokenizer with one); "
            "pass eos_token_id=... or stop_at_eos=False"
        )
    tokens, mask, kind, strip_bos = _prompt(model, input, attention_mask, prepend_bos, padding_side)
    if return_type == "str" and getattr(model, "tokenizer", None) is None:
        raise ValueError("return_type='str' needs a tokenizer; set one with model.set_tokenizer(...)")
    max_new = check_context(model.cfg, tokens.shape[1], max_new_tokens)
    tokenizer = getattr(model, "tokenizer", None)
    pad = tokenizer.pad_token_id if tokenizer is not None else None
    fill_id = pad if pad is not None else (eos[0] if eos else 0)
    device = tokens.device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    output_kind = kind
    if return_type == "str":
        output_kind = "str" if kind in ("str", "tokens1d") else "strs"
    elif return_type == "tokens":
        output_kind = "tokens1d" if kind == "tokens1d" else "tokens"
    return GenerationPlan(
        tokens=tokens,
        mask=mask,
        max_new=max_new,
        sampling=sampling,
        eos=torch.tensor(eos, device=device) if stop_at_eos else None,
        fill_id=fill_id,
        generator=generator,
        use_cache=use_past_kv_cache,
        kv_cache_dtype=kv_cache_dtype,
        num_beams=num_beams,
        length_penalty=float(length_penalty),
        early_stopping=early_stopping,
        output_kind=output_kind,
        strip_bos=strip_bos,
        output_logprobs=output_logprobs,
        verbose=verbose,
    )


def format_output(
    model: Any, plan: GenerationPlan, tokens: Int[Tensor, "batch pos"], gen_lengths: Int[Tensor, " batch"]
) -> Tensor | str | list[str]:
    """Tokens or text, as ``plan.output_kind`` asks.

    Text leaves out left padding, a BOS that ``generate`` prepended, and the fill after a row's EOS
    (the EOS itself is kept).
    """
    if plan.output_kind == "tokens":
        return tokens
    if plan.output_kind == "tokens1d":
        return tokens[0]
    P = plan.prompt_len
    texts = []
    for row in range(tokens.shape[0]):
        start = 0 if plan.mask is None else int((~plan.mask[row]).sum())
        start += int(plan.strip_bos)
        ids = tokens[row, start : P + int(gen_lengths[row])]
        texts.append(model.tokenizer.decode(ids.cpu()))
    return texts[0] if plan.output_kind == "str" else texts


class TextStream:
    """Turns per-step tokens into per-step text deltas (holding back incomplete UTF-8 characters)."""

    def __init__(self, tokenizer: Any, batch: int):
        self.tokenizer = tokenizer
        self.ids: list[list[int]] = [[] for _ in range(batch)]
        self.emitted = [0] * batch

    def push(self, tokens: Int[Tensor, " batch"], live: list[bool]) -> list[str]:
        out = []
        for row, (tok, alive) in enumerate(zip(tokens.tolist(), live)):
            if alive:
                self.ids[row].append(tok)
            text = self.tokenizer.decode(self.ids[row])
            if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
                out.append("")
                continue
            out.append(text[self.emitted[row] :])
            self.emitted[row] = len(text)
        return out

    def flush(self) -> list[str]:
        """Whatever is still held back (an incomplete character at the very end)."""
        out = []
        for row, ids in enumerate(self.ids):
            text = self.tokenizer.decode(ids)
            out.append(text[self.emitted[row] :])
            self.emitted[row] = len(text)
        return out
