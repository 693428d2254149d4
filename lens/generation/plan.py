"""Argument checking, prompt preparation and output formatting for ``generate``.

Everything that can be wrong with a ``generate`` call is caught here, before any compute: sampling
settings, beam settings, an empty prompt, a missing EOS token, and a prompt plus ``max_new_tokens``
longer than the model's context (Lit-GPT style, with the numbers). The result is a
:class:`GenerationPlan` that the decode loops (``generate.py``, ``beam.py``) follow.

>>> plan = make_plan(model, "Hello", GenerationConfig(max_new_tokens=5))
>>> plan.tokens.shape, plan.max_new
(torch.Size([1, 6]), 5)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from lens.generation.config import GenerationConfig
from lens.generation.sampling import SamplingConfig


@dataclass
class GenerationPlan:
    """A validated ``generate`` call: its :class:`GenerationConfig` and the left-padded prompt."""

    config: GenerationConfig
    tokens: Int[Tensor, "batch prompt"]
    mask: Bool[Tensor, "batch prompt"] | None  # None when no row is padded
    max_new: int
    sampling: SamplingConfig
    eos: Int[Tensor, " n_eos"] | None  # None unless stopping at EOS
    fill_id: int  # written after a row has finished (pad if the tokenizer has one, else the first EOS)
    generator: torch.Generator | None
    output_kind: str  # "str", "strs", "tokens" or "tokens1d"
    strip_bos: bool  # a BOS that generate itself prepended (left out of decoded strings)

    @property
    def prompt_len(self) -> int:
        return self.tokens.shape[1]

    def __getattr__(self, name: str) -> Any:  # num_beams, use_past_kv_cache, verbose, ...: the config's
        if name.startswith("__") or name == "config":
            raise AttributeError(name)
        return getattr(self.config, name)


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


def _eos_ids(model: Any, eos_token_id: list[int] | None) -> list[int]:
    if eos_token_id is None:
        tokenizer = getattr(model, "tokenizer", None)
        return list(tokenizer.eos_token_ids) if tokenizer is not None else []
    for i in eos_token_id:
        if i >= model.cfg.d_vocab:
            raise ValueError(f"eos_token_id {i} is outside the vocabulary [0, d_vocab={model.cfg.d_vocab})")
    return list(eos_token_id)


def _left_align(tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Move right padding to the left (each row's real tokens end at the last column)."""
    width = tokens.shape[1]
    shift = width - mask.long().sum(-1, keepdim=True)
    idx = (torch.arange(width, device=tokens.device) - shift) % width
    return tokens.gather(1, idx), mask.gather(1, idx)


def _is_chat(value: Any) -> bool:
    """One conversation: a non-empty list of dicts that each have a ``"role"``."""
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def _prompt(
    model: Any, input: Any, attention_mask: Tensor | None, prepend_bos: bool | None, padding_side: str
) -> tuple[Tensor, Tensor | None, str, bool]:
    """(tokens, mask | None, output kind, strip_bos) with any padding on the left."""
    if _is_chat(input) or (isinstance(input, (list, tuple)) and input and all(_is_chat(c) for c in input)):
        if attention_mask is not None:
            raise ValueError("attention_mask is only for token inputs; chat messages build their own")
        # chat messages: rendered with the checkpoint's template and a generation prompt, as transformers'
        # apply_chat_template(add_generation_prompt=True); the template writes any BOS, so none is added
        input = model.apply_chat_template(list(input), add_generation_prompt=True, tokenize=False)
        prepend_bos = bool(prepend_bos)
    if isinstance(input, str) or (isinstance(input, list) and all(isinstance(s, str) for s in input)):
        if isinstance(input, list) and not input:
            raise ValueError("the prompt list is empty; pass at least one prompt")
        if attention_mask is not None:
            raise ValueError("attention_mask is only for token inputs; string prompts build their own")
        bos = model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
        tokens, mask = model.to_tokens(input, prepend_bos=bos, padding_side=padding_side, return_attention_mask=True)
        kind = "str" if isinstance(input, str) else "strs"
        strip_bos = bool(bos)
    elif isinstance(input, Tensor):
        if input.ndim not in (1, 2):
            raise ValueError(f"token input must be [pos] or [batch, pos], got shape {tuple(input.shape)}")
        kind = "tokens1d" if input.ndim == 1 else "tokens"
        tokens, mask, strip_bos = input, attention_mask, False
    else:
        raise TypeError(
            "input must be a string, a list of strings, chat messages (a list of {'role', 'content'} dicts, or a "
            f"list of such lists) or a token tensor, got {type(input).__name__}"
        )
    if tokens.ndim == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.numel() == 0:
        raise ValueError("the prompt is empty; generate needs at least one token to condition on")
    tokens = model.check_tokens(tokens)
    if mask is not None:
        mask = model.check_attention_mask(mask, *tokens.shape).to(tokens.device).bool()
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


def check_assistant(model: Any, assistant: Any, needed: int) -> None:
    """``ValueError`` unless ``assistant`` can draft for ``model``: same vocabulary and tokenizer, enough context."""
    if assistant.cfg.d_vocab != model.cfg.d_vocab:
        raise ValueError(
            f"assistant_model has d_vocab={assistant.cfg.d_vocab} but the model has d_vocab={model.cfg.d_vocab}; "
            "speculative decoding needs the same vocabulary"
        )
    mine, theirs = getattr(model, "tokenizer", None), getattr(assistant, "tokenizer", None)
    if mine is not None and theirs is not None and mine is not theirs:
        same = mine.is_byte_level == theirs.is_byte_level and mine.get_vocab() == theirs.get_vocab()
        if not same:
            raise ValueError(
                "assistant_model's tokenizer differs from the model's (another vocabulary); speculative decoding "
                "needs the same tokenizer"
            )
    if needed > assistant.cfg.n_ctx:
        raise ValueError(
            f"assistant_model's context is {assistant.cfg.n_ctx} positions, but this call needs {needed} "
            "(prompt + max_new_tokens)"
        )


def make_plan(model: Any, input: Any, config: GenerationConfig, attention_mask: Tensor | None = None) -> GenerationPlan:
    """Check ``config`` against ``model`` and prepare the prompt; raises before any model compute."""
    eos = _eos_ids(model, config.eos_token_id)
    if config.stop_at_eos and not eos:
        raise ValueError(
            "stop_at_eos=True but no EOS token is known (the model has no tokenizer with one); "
            "pass eos_token_id=... or stop_at_eos=False"
        )
    tokens, mask, kind, strip_bos = _prompt(model, input, attention_mask, config.prepend_bos, config.padding_side)
    tokenizer = getattr(model, "tokenizer", None)
    if config.return_type == "str" and tokenizer is None:
        raise ValueError("return_type='str' needs a tokenizer; set one with model.set_tokenizer(...)")
    max_new = check_context(model.cfg, tokens.shape[1], config.max_new_tokens)
    if config.assistant_model is not None:
        check_assistant(model, config.assistant_model, tokens.shape[1] + max_new)
    pad = tokenizer.pad_token_id if tokenizer is not None else None
    fill_id = pad if pad is not None else (eos[0] if eos else 0)
    device = tokens.device
    generator = None
    if config.seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(config.seed)
    output_kind = kind
    if config.return_type == "str":
        output_kind = "str" if kind in ("str", "tokens1d") else "strs"
    elif config.return_type == "tokens":
        output_kind = "tokens1d" if kind == "tokens1d" else "tokens"
    return GenerationPlan(
        config=config,
        tokens=tokens,
        mask=mask,
        max_new=max_new,
        sampling=config.sampling,
        eos=torch.tensor(eos, device=device) if config.stop_at_eos else None,
        fill_id=fill_id,
        generator=generator,
        output_kind=output_kind,
        strip_bos=strip_bos,
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
