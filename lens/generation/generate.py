"""The decode loops behind ``HookedTransformer.generate`` / ``generate_stream``: KV-cached, hookable, HF-exact.

A client of the model's public methods only: one prefill ``model.decode_step`` runs the (left-padded)
prompt into a preallocated :class:`KVCache`; each decode step then feeds one token per row through the
same ``decode_step``, that is through the model's ordinary forward, so every hook (lens hook points,
PyTorch module hooks, global module hooks) sees every step. Token selection reuses
:mod:`lens.generation.sampling`, so greedy decoding, seeded sampling and beam search pick the tokens
``transformers``' ``generate`` picks for the same weights. Hooks set with ``model.hooks(...)`` fire on
every forward, the prompt's and each decode step's (where activations have ``pos = 1``); ``return_cache=True``
gathers them into one
:class:`ActivationCache` over prompt and generated positions.

>>> model.generate("The cat", max_new_tokens=10)                      # str in, str out (greedy)
>>> model.generate(tokens, 20, do_sample=True, top_p=0.9, seed=0)      # tokens in, tokens out
>>> out, logprobs, cache = model.generate("Hi", 5, output_logprobs=True, return_cache=True,
...                                       names_filter=lambda n: n.endswith("hook_pattern"))
>>> for piece in model.generate_stream("Once upon a time", 50):
...     print(piece, end="")
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lens.components.rotary import cache_refresh_length
from lens.generation.beam import beam_search
from lens.generation.config import GenerationConfig
from lens.generation.kv_cache import KVCache
from lens.generation.plan import GenerationPlan, TextStream, format_output, make_plan
from lens.generation.record import ActivationRecorder


class GenerationOutput(NamedTuple):
    """What ``generate`` returns when ``output_logprobs`` or ``return_cache`` is set.

    ``logprobs`` ``[batch, n_new]``: log-probability of each generated token under the model (log-softmax
    of the raw logits; beam search: of the log-probabilities beam search scored, after the repetition
    penalty), 0 after a row's EOS; ``cache``: the recorded activations. Either is None when not asked.
    """

    output: Any
    logprobs: Float[Tensor, "batch n_new"] | None
    cache: Any


class _SampleRun:
    """Greedy / sampling decode loop; iterating yields ``(tokens [batch], live [batch])`` per step."""

    def __init__(self, model: Any, plan: GenerationPlan, recorder: ActivationRecorder | None = None):
        self.model, self.plan, self.recorder = model, plan, recorder
        self.steps = 0

    def _forward(self, tokens: Tensor, mask: Tensor | None, cache: KVCache | None, q_end: int, n_new: int) -> Tensor:
        if self.recorder is not None:
            self.recorder.begin_step(n_new, q_end)
        return self.model.decode_step(tokens, cache, attention_mask=mask)

    def _setup(self) -> None:
        plan = self.plan
        b, P = plan.tokens.shape
        total, dev = P + plan.max_new, plan.tokens.device
        self.out = torch.full((b, total), plan.fill_id, dtype=torch.long, device=dev)
        self.out[:, :P] = plan.tokens
        self.key_mask = None
        if plan.mask is not None:
            self.key_mask = torch.ones(b, total, dtype=torch.bool, device=dev)
            self.key_mask[:, :P] = plan.mask
        self.unfinished = torch.ones(b, dtype=torch.bool, device=dev)
        self.gen_len = torch.zeros(b, dtype=torch.long, device=dev)
        self.logprobs = torch.zeros(b, plan.max_new, device=dev) if plan.output_logprobs else None
        self.done = False
        self.cache = KVCache.for_model(self.model, b, total, plan.kv_cache_dtype) if plan.use_past_kv_cache else None
        self.refresh_at = cache_refresh_length(self.model.cfg)  # longrope: recompute the cache past this length
        self.use_penalty = plan.sampling.do_sample or plan.sampling.repetition_penalty != 1.0

    def _select(self, logits: Float[Tensor, "batch vocab"], t: int) -> tuple[Tensor, Tensor]:
        plan = self.plan
        scores = logits
        if self.use_penalty:
            history_mask = None if self.key_mask is None else self.key_mask[:, :t]
            scores = plan.sampling.process(logits, self.out[:, :t], history_mask)
        nxt = plan.sampling.sample(scores, plan.generator)
        live = self.unfinished
        if plan.eos is not None:
            nxt = torch.where(live, nxt, plan.fill_id)
            self.unfinished = live & ~torch.isin(nxt, plan.eos)
            self.done = not bool(self.unfinished.any())
        self.gen_len += live
        self.out[:, t] = nxt
        if self.logprobs is not None:
            lp = logits.log_softmax(-1).gather(1, nxt[:, None]).squeeze(1)
            self.logprobs[:, t - plan.prompt_len] = torch.where(live, lp, 0.0)
        return nxt, live

    @torch.inference_mode()
    def _feed(self, nxt: Int[Tensor, " batch"], t: int) -> Float[Tensor, "batch vocab"]:
        """Run the token just chosen at sequence position ``t``; logits for position ``t + 1``."""
        if self.cache is not None:
            if self.refresh_at is not None and t + 1 > self.refresh_at >= self.cache.offset:
                # the sequence just outgrew the short rotary tables (longrope): every key rotates anew, so
                # the cache is refilled from the whole sequence, as transformers' Phi-3 generate does
                self.cache.reset()
                mask = None if self.key_mask is None else self.key_mask[:, : t + 1]
                return self._forward(self.out[:, : t + 1], mask, self.cache, t + 1, 1)
            return self._forward(nxt[:, None], None, self.cache, t + 1, 1)
        mask = None if self.key_mask is None else self.key_mask[:, : t + 1]
        return self._forward(self.out[:, : t + 1], mask, None, t + 1, 1)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        plan = self.plan
        P = plan.prompt_len
        with torch.inference_mode():
            self._setup()
            if plan.max_new == 0 and self.recorder is None:
                return
            logits = self._forward(plan.tokens, plan.mask, self.cache, P, P)
            if plan.max_new == 0:  # return_cache still records the prompt
                return
        bar = None
        if plan.verbose:
            from tqdm.auto import tqdm

            bar = tqdm(total=plan.max_new, desc="generate")
        try:
            for i in range(plan.max_new):
                t = P + i
                with torch.inference_mode():
                    nxt, live = self._select(logits, t)
                self.steps = i + 1
                if bar is not None:
                    bar.update(1)
                yield nxt, live
                if self.done or i + 1 == plan.max_new:
                    break
                logits = self._feed(nxt, t)
            if self.recorder is not None and self.steps:  # so the last token has activations too
                self._feed(self.out[:, P + self.steps - 1], P + self.steps - 1)
        finally:
            if bar is not None:
                bar.close()

    def result(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """(tokens [batch, prompt + steps], generated lengths [batch], logprobs [batch, steps] | None)."""
        end = self.plan.prompt_len + self.steps
        logprobs = None if self.logprobs is None else self.logprobs[:, : self.steps].clone()
        return self.out[:, :end].clone(), self.gen_len.clone(), logprobs


def generate(model: Any, input: Any, config: GenerationConfig, attention_mask: Tensor | None = None) -> Any:
    """Continue ``input`` under ``config``: what ``HookedTransformer.generate`` runs (see its docs).

    Returns the output alone, or ``GenerationOutput(output, logprobs, cache)`` when ``output_logprobs``
    or ``return_cache`` is set.
    """
    keep = model.names_filter_fn(config.names_filter) if config.return_cache else None
    plan = make_plan(model, input, config, attention_mask)
    recorder = ActivationRecorder(model, keep) if keep is not None else None
    rows = plan.tokens.shape[0] * plan.num_beams
    with model.hooks(fwd_hooks=recorder.hooks() if recorder is not None else ()), model.decoding(rows, plan.max_new):
        if plan.num_beams > 1:  # (cloned outside inference mode: ordinary tensors for the caller)
            tokens, gen_len, logprobs = (None if t is None else t.clone() for t in beam_search(model, plan))
        else:
            run = _SampleRun(model, plan, recorder)
            for _ in run:
                pass
            tokens, gen_len, logprobs = run.result()
    output = format_output(model, plan, tokens, gen_len)
    if not (config.output_logprobs or config.return_cache):
        return output
    return GenerationOutput(output, logprobs, recorder.finish() if recorder is not None else None)


def generate_stream(
    model: Any, input: Any, config: GenerationConfig, attention_mask: Tensor | None = None
) -> Iterator[Any]:
    """Like :func:`generate` (no beams, no ``return_cache``), yielding each step's output as soon as it exists.

    The call is checked when this is called, before the first item is asked for.
    """
    if config.num_beams > 1:
        raise ValueError("generate_stream does not support beam search (num_beams > 1); use generate")
    if config.return_cache:
        raise ValueError("generate_stream does not support return_cache=True; use generate")
    return _stream(model, make_plan(model, input, config, attention_mask))


def _stream(model: Any, plan: GenerationPlan) -> Iterator[Any]:
    # No model.decoding() here: the caller's code runs between steps and may edit weights in any way.
    run = _SampleRun(model, plan)
    text = TextStream(model.tokenizer, plan.tokens.shape[0]) if plan.output_kind in ("str", "strs") else None
    for nxt, live in run:
        item = nxt.clone() if text is None else text.push(nxt, live.tolist())
        if text is not None and plan.output_kind == "str":
            item = item[0]
        if plan.output_logprobs:
            item = (item, run.logprobs[:, run.steps - 1].clone())
        yield item
    rest = text.flush() if text is not None else []
    if any(rest) and not plan.output_logprobs:
        yield rest[0] if plan.output_kind == "str" else rest
