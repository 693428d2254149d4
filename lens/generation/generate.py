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

import contextlib
from collections.abc import Iterator
from typing import Any, NamedTuple

from jaxtyping import Float
from torch import Tensor

from lens.generation.beam import beam_search
from lens.generation.config import GenerationConfig
from lens.generation.loop import SampleRun
from lens.generation.plan import GenerationPlan, TextStream, format_output, make_plan
from lens.generation.record import ActivationRecorder
from lens.generation.speculative import SpeculativeRun, SpeculativeStats
from lens.generation.trace import GenerationTrace

_SampleRun = SampleRun  # the loop's old name (it lives in lens.generation.loop)


class _Fields(NamedTuple):
    output: Any
    logprobs: Float[Tensor, "batch n_new"] | None
    cache: Any


class GenerationOutput(_Fields):
    """What ``generate`` returns when ``output_logprobs``, ``return_cache``, ``return_stats`` or ``output_trace``
    is set: the named tuple ``(output, logprobs, cache)``, plus the attributes ``stats`` and ``trace``.

    ``logprobs`` ``[batch, n_new]``: log-probability of each generated token under the model (log-softmax
    of the raw logits; beam search: of the log-probabilities beam search scored, after the repetition
    penalty), 0 after a row's EOS; ``cache``: the recorded activations; ``stats``: a
    :class:`~lens.generation.speculative.SpeculativeStats`; ``trace``: a
    :class:`~lens.generation.trace.GenerationTrace`. Each is None when not asked for.

    >>> out, logprobs, cache = model.generate("Hi", 5, output_logprobs=True)     # unpacks as three
    >>> model.generate("Hi", 5, return_stats=True).stats.forwards
    """

    stats: SpeculativeStats | None
    trace: GenerationTrace | None

    def __new__(
        cls,
        output: Any,
        logprobs: Tensor | None = None,
        cache: Any = None,
        stats: SpeculativeStats | None = None,
        trace: GenerationTrace | None = None,
    ) -> GenerationOutput:
        self = super().__new__(cls, output, logprobs, cache)
        self.stats, self.trace = stats, trace
        return self


def _run(model: Any, plan: GenerationPlan, recorder: ActivationRecorder | None = None) -> SampleRun:
    """The loop for ``plan``: speculative when a draft is set (``return_cache`` records plain decoding)."""
    if plan.config.speculative and recorder is None:
        return SpeculativeRun(model, plan)
    return SampleRun(model, plan, recorder)


def _stats(run: SampleRun) -> SpeculativeStats:
    if isinstance(run, SpeculativeRun):
        stats = run.stats
        stats.forwards, stats.steps, stats.draft_forwards = run.forwards, run.steps, getattr(run.draft, "forwards", 0)
        return stats
    return SpeculativeStats(forwards=run.forwards, steps=run.steps)


def generate(model: Any, input: Any, config: GenerationConfig, attention_mask: Tensor | None = None) -> Any:
    """Continue ``input`` under ``config``: what ``HookedTransformer.generate`` runs (see its docs).

    Returns the output alone, or ``GenerationOutput(output, logprobs, cache)`` when ``output_logprobs``
    or ``return_cache`` is set.
    """
    keep = model.names_filter_fn(config.names_filter) if config.return_cache else None
    plan = make_plan(model, input, config, attention_mask)
    recorder = ActivationRecorder(model, keep) if keep is not None else None
    rows = plan.tokens.shape[0] * plan.num_beams
    run = None
    with model.hooks(fwd_hooks=recorder.hooks() if recorder is not None else ()), model.decoding(rows, plan.max_new):
        if plan.num_beams > 1:  # (cloned outside inference mode: ordinary tensors for the caller)
            tokens, gen_len, logprobs = (None if t is None else t.clone() for t in beam_search(model, plan))
        else:
            run = _run(model, plan, recorder)
            draft = plan.assistant_model if isinstance(run, SpeculativeRun) else None
            with draft.decoding(rows, plan.max_new) if draft is not None else contextlib.nullcontext():
                for _ in run:
                    pass
            tokens, gen_len, logprobs = run.result()
    output = format_output(model, plan, tokens, gen_len)
    if not (config.output_logprobs or config.return_cache or config.return_stats or config.output_trace):
        return output
    stats = _stats(run) if config.return_stats and run is not None else None
    trace = run.trace.finish() if run is not None and run.trace is not None else None  # steps = 0 when max_new = 0
    return GenerationOutput(output, logprobs, recorder.finish() if recorder is not None else None, stats, trace)


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
    plan = make_plan(model, input, config, attention_mask)
    return GenerationStream(_run(model, plan))


class GenerationStream:
    """The iterator :func:`generate_stream` returns; ``stats`` and ``trace`` describe the steps run so far.

    >>> stream = model.generate_stream(prompt, 50, prompt_lookup_num_tokens=8)
    >>> text = "".join(stream)
    >>> stream.stats.accepted, stream.stats.forwards
    """

    def __init__(self, run: SampleRun):
        self.run = run
        self._items = _stream(run)

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> Any:
        return next(self._items)

    @property
    def stats(self) -> SpeculativeStats:
        """Proposed / accepted tokens and forwards so far (:class:`SpeculativeStats`)."""
        return _stats(self.run)

    @property
    def trace(self) -> GenerationTrace | None:
        """The trace of the tokens yielded so far (with ``output_trace=True``, ``steps = 0`` before the first; else
        None)."""
        return self.run.trace.finish(self.run.steps) if self.run.trace is not None else None


def _stream(run: SampleRun) -> Iterator[Any]:
    # No model.decoding() here: the caller's code runs between steps and may edit weights in any way.
    plan, model = run.plan, run.model
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
