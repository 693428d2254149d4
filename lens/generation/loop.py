"""The greedy / sampling decode loop behind ``generate`` and ``generate_stream`` (no beams).

One prefill ``model.decode_step`` runs the (left-padded) prompt into a preallocated :class:`KVCache`; each
step then picks a token with :mod:`lens.generation.sampling` (Hugging Face's processors) and feeds it
back through ``decode_step``, the model's ordinary forward, so every hook sees every step. Iterating a
:class:`SampleRun` yields ``(tokens [batch], live [batch])`` per step; :meth:`SampleRun.result` gives the
tokens, generated lengths and log-probabilities. :class:`lens.generation.speculative.SpeculativeRun`
extends it with proposals verified several tokens per forward.

>>> run = SampleRun(model, make_plan(model, "Hello", GenerationConfig(max_new_tokens=5)))
>>> for tokens, live in run:
...     pass
>>> tokens, lengths, logprobs = run.result()
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lens.components.rotary import cache_refresh_length
from lens.generation.kv_cache import KVCache
from lens.generation.plan import GenerationPlan
from lens.generation.record import ActivationRecorder
from lens.generation.trace import TraceRecorder


class SampleRun:
    """Greedy / sampling decode loop; iterating yields ``(tokens [batch], live [batch])`` per step.

    Attributes (after iterating): ``steps`` (tokens per row so far), ``forwards`` (model forwards run),
    ``logprobs`` (``[batch, max_new]`` or None), ``trace`` (a :class:`TraceRecorder` or None).
    """

    spare = 0  # extra ring-buffer slots in the KV cache (speculative decoding rolls positions back)

    def __init__(self, model: Any, plan: GenerationPlan, recorder: ActivationRecorder | None = None):
        self.model, self.plan, self.recorder = model, plan, recorder
        self.steps = 0
        self.forwards = 0
        self.trace = None
        if plan.output_trace:
            vocab = model.cfg.d_vocab_out or model.cfg.d_vocab
            self.trace = TraceRecorder(plan.trace_top_k, plan.tokens.shape[0], vocab, plan.tokens.device)

    def _forward(self, tokens: Tensor, mask: Tensor | None, cache: KVCache | None, q_end: int, n_new: int) -> Tensor:
        if self.recorder is not None:
            self.recorder.begin_step(n_new, q_end)
        self.forwards += 1
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
        self.cache = None
        if plan.use_past_kv_cache:
            self.cache = KVCache.for_model(self.model, b, total, plan.kv_cache_dtype, spare=self.spare)
        self.refresh_at = cache_refresh_length(self.model.cfg)  # longrope: recompute the cache past this length
        self.use_penalty = plan.sampling.do_sample or plan.sampling.repetition_penalty != 1.0

    def _scores(self, logits: Float[Tensor, "batch vocab"], t: int) -> Float[Tensor, "batch vocab"]:
        """The sampler's scores for sequence position ``t`` (history: the tokens before ``t``)."""
        if not self.use_penalty:
            return logits
        history_mask = None if self.key_mask is None else self.key_mask[:, :t]
        return self.plan.sampling.process(logits, self.out[:, :t], history_mask)

    def _select(self, logits: Float[Tensor, "batch vocab"], t: int) -> tuple[Tensor, Tensor]:
        scores = self._scores(logits, t)
        return self._commit(self.plan.sampling.sample(scores, self.plan.generator), logits, scores, t)

    def _commit(
        self,
        nxt: Int[Tensor, " batch"],
        logits: Float[Tensor, "batch vocab"],
        scores: Float[Tensor, "batch vocab"],
        t: int,
        proposed: Int[Tensor, " batch"] | None = None,
        accepted: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Write the token chosen for position ``t`` (EOS bookkeeping, log-probabilities, trace)."""
        plan = self.plan
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
        if self.trace is not None:
            self.trace.add(logits, scores, nxt, live, proposed, accepted)
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

    def _progress(self) -> Any:
        if not self.plan.verbose:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.plan.max_new, desc="generate")

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
        bar = self._progress()
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
