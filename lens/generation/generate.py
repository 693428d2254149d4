"""``HookedTransformer.generate`` / ``generate_stream``: KV-cached, hookable, Hugging Face-exact decoding.

One prefill forward runs the (left-padded) prompt into a preallocated :class:`KVCache`; each decode
step then feeds one token per row. Token selection reuses :mod:`lens.generation.sampling`, so greedy
decoding, seeded sampling and beam search pick the tokens ``transformers``' ``generate`` picks for
the same weights. Hooks set with ``model.hooks(...)`` fire on every forward, the prompt's and each
decode step's (where activations have ``pos = 1``); ``return_cache=True`` gathers them into one
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

from lens.generation import decode_unembed, fast_step
from lens.generation.beam import beam_search
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
        return self.model._next_logits(tokens, mask, cache, self.prepared)

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
        self.cache = KVCache.for_model(self.model, b, total, plan.kv_cache_dtype) if plan.use_cache else None
        self.prepared = fast_step.Prepared(self.model, rows=b * plan.max_new)
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


class GenerationMixin:
    """Adds ``generate`` and ``generate_stream`` to :class:`lens.HookedTransformer`."""

    decode_unembed_copy: bool = True
    """Let long CPU ``generate`` calls read a tied unembedding from a checked input-major copy (faster
    decoding for ``d_vocab x d_model`` more memory; :mod:`lens.generation.decode_unembed`). Set False
    on a model to never keep one."""

    def release_decode_copy(self) -> None:
        """Free the input-major unembedding copy kept for decoding, if any (rebuilt when next needed)."""
        decode_unembed.release(self)

    @torch.inference_mode()
    def _next_logits(
        self,
        tokens: Int[Tensor, "batch q"],
        attention_mask: Tensor | None,
        cache: KVCache | None,
        prepared: fast_step.Prepared | None = None,
    ) -> Float[Tensor, "batch vocab"]:
        """Float32 logits at the last position of one forward (no token-range check: callers did it).

        ``prepared`` (:class:`fast_step.Prepared`, built once per generate call) saves regathering the
        weights each step when nothing is hooked.
        """
        batch, q_len = tokens.shape
        ctx = self.make_context(batch, q_len, attention_mask, cache)
        n = self.cfg.n_layers
        prepared = prepared if prepared is not None else fast_step.Prepared(self)
        if prepared.applies():  # nothing hooked: the same arithmetic without the module machinery
            resid = self._run_blocks(fast_step.embed(prepared, tokens, ctx), ctx, 0, n, cache, prepared)
            return fast_step.unembed_last(prepared, resid).float()
        resid = self._run_blocks(self.embed_tokens(tokens, ctx), ctx, 0, n, cache)
        return self._unembed_final(resid, last_only=True).float()

    def generate(
        self,
        input: str | list[str] | Int[Tensor, "batch pos"] | Int[Tensor, " pos"] = "",
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
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        seed: int | None = None,
        use_past_kv_cache: bool = True,
        kv_cache_dtype: str | None = None,
        return_type: str = "input",
        output_logprobs: bool = False,
        return_cache: bool = False,
        names_filter: Any = None,
        verbose: bool = False,
    ) -> Any:
        """Continue ``input`` by up to ``max_new_tokens`` tokens (None: fill the rest of the context).

        Args:
            input: a string, a list of strings (left-padded into one batch), or token ids ``[pos]`` /
                ``[batch, pos]`` (with ``attention_mask`` when left-padded).
            do_sample, temperature, top_k, top_p, min_p, repetition_penalty: Hugging Face semantics and
                order (see :mod:`lens.generation.sampling`); greedy when ``do_sample=False``.
            num_beams, length_penalty, early_stopping: beam search as ``transformers`` runs it.
            stop_at_eos / eos_token_id: stop a row at an EOS (default: the tokenizer's); finished rows
                are filled with the pad token (else the first EOS) until every row is done.
            prepend_bos, padding_side: how strings are tokenized (right padding is moved left).
            seed: seeds a private ``torch.Generator`` for sampling (the global RNG is left alone).
            use_past_kv_cache: False recomputes the whole sequence each step (same logits, slower).
            kv_cache_dtype: ``"int8"`` stores the cache as int8 with per-token, per-head scales.
            return_type: ``"input"`` (same kind as ``input``), ``"str"`` or ``"tokens"``.
            output_logprobs / return_cache / names_filter: also return the generated tokens'
                log-probabilities and an :class:`ActivationCache` of the hooks ``names_filter`` selects
                (all when None) over every output position (one extra forward runs the last token);
                see :class:`GenerationOutput` and :mod:`lens.generation.record`.
            verbose: show a tqdm progress bar.

        Returns:
            The output alone, or ``GenerationOutput(output, logprobs, cache)`` when ``output_logprobs``
            or ``return_cache`` is set.

        >>> model.generate(["Hello", "A longer prompt"], max_new_tokens=8)   # list of two strings
        """
        keep = self._recording_filter(return_cache, names_filter)
        plan = make_plan(
            self, input, max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
            min_p=min_p, repetition_penalty=repetition_penalty, num_beams=num_beams, length_penalty=length_penalty,
            early_stopping=early_stopping, stop_at_eos=stop_at_eos, eos_token_id=eos_token_id,
            prepend_bos=prepend_bos, padding_side=padding_side, attention_mask=attention_mask, seed=seed,
            use_past_kv_cache=use_past_kv_cache, kv_cache_dtype=kv_cache_dtype, return_type=return_type,
            output_logprobs=output_logprobs, verbose=verbose,
        )  # fmt: skip
        if return_cache and plan.num_beams > 1:
            raise ValueError("return_cache=True is not supported with beam search (num_beams > 1)")
        recorder = ActivationRecorder(self, keep) if keep is not None else None
        with self.hooks(fwd_hooks=recorder.hooks() if recorder is not None else ()):
            if plan.num_beams > 1:  # (cloned outside inference mode: ordinary tensors for the caller)
                tokens, gen_len, logprobs = (None if t is None else t.clone() for t in beam_search(self, plan))
            else:
                run = _SampleRun(self, plan, recorder)
                for _ in run:
                    pass
                tokens, gen_len, logprobs = run.result()
        output = format_output(self, plan, tokens, gen_len)
        if not (output_logprobs or return_cache):
            return output
        return GenerationOutput(output, logprobs, recorder.finish() if recorder is not None else None)

    def generate_stream(
        self,
        input: str | list[str] | Int[Tensor, "batch pos"] | Int[Tensor, " pos"] = "",
        max_new_tokens: int | None = None,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        repetition_penalty: float = 1.0,
        stop_at_eos: bool = True,
        eos_token_id: int | list[int] | None = None,
        prepend_bos: bool | None = None,
        padding_side: str = "left",
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        seed: int | None = None,
        use_past_kv_cache: bool = True,
        kv_cache_dtype: str | None = None,
        return_type: str = "input",
        output_logprobs: bool = False,
        verbose: bool = False,
    ) -> Iterator[Any]:
        """Like :meth:`generate` (without beams), but yields each step's output as soon as it exists.

        Yields per step: text deltas (a ``str`` for one string prompt, a list for a list; "" for a
        row that has finished) when the output is text, else the new token ids ``[batch]``; with
        ``output_logprobs`` a ``(piece, logprobs [batch])`` pair. Arguments are checked at the call,
        before the first step; hooks active in ``model.hooks(...)`` fire while the stream is consumed.

        >>> for piece in model.generate_stream("Once", max_new_tokens=20):
        ...     print(piece, end="", flush=True)
        """
        plan = make_plan(
            self, input, max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
            min_p=min_p, repetition_penalty=repetition_penalty, stop_at_eos=stop_at_eos, eos_token_id=eos_token_id,
            prepend_bos=prepend_bos, padding_side=padding_side, attention_mask=attention_mask, seed=seed,
            use_past_kv_cache=use_past_kv_cache, kv_cache_dtype=kv_cache_dtype, return_type=return_type,
            output_logprobs=output_logprobs, verbose=verbose,
        )  # fmt: skip
        return self._stream(plan)

    def _stream(self, plan: GenerationPlan) -> Iterator[Any]:
        run = _SampleRun(self, plan)
        text = TextStream(self.tokenizer, plan.tokens.shape[0]) if plan.output_kind in ("str", "strs") else None
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

    def _recording_filter(self, return_cache: bool, names_filter: Any) -> Any:
        if not isinstance(return_cache, bool):
            raise TypeError(f"return_cache must be a bool, got {return_cache!r}")
        if not return_cache:
            if names_filter is not None:
                raise ValueError("names_filter selects what return_cache=True records; set return_cache=True")
            return None
        return self.names_filter_fn(names_filter)
