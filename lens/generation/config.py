"""``GenerationConfig``: every setting of a ``generate`` call in one validated dataclass.

Why: ``generate`` and ``generate_stream`` take the same ~20 settings. Writing them out in every
signature let the lists drift; here they are declared once, with Hugging Face's names where HF has one
(``max_new_tokens``, ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``min_p``,
``repetition_penalty``, ``num_beams``, ``length_penalty``, ``early_stopping``, ``eos_token_id``), and
checked once when the config is made. Checks that need the model (an EOS id inside the vocabulary, hook
names, the prompt fitting the context) happen when a call is planned (:mod:`lens.generation.plan`),
still before any compute.

``model.generate(prompt, **settings)`` and ``model.generate(prompt, config=cfg, **overrides)`` are the
same call; an unknown setting raises ``TypeError`` naming the closest valid one.

>>> cfg = GenerationConfig(max_new_tokens=20, do_sample=True, top_p=0.9, seed=0)
>>> model.generate("Once upon a time", config=cfg, temperature=0.7)    # an override for this call
>>> GenerationConfig(top_pp=0.9)
Traceback (most recent call last):
TypeError: unknown generation setting 'top_pp'; did you mean 'top_p'?
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
from dataclasses import dataclass
from typing import Any

from lens.generation.kv_cache import KV_CACHE_DTYPES
from lens.generation.sampling import SamplingConfig

RETURN_TYPES = ("input", "str", "tokens")
ASSISTANT_SCHEDULES = ("heuristic", "constant")


def int_arg(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int ``>= minimum``; ``TypeError``/``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


@dataclass(frozen=True, init=False)
class GenerationConfig:
    """The settings of one ``generate`` / ``generate_stream`` call (Hugging Face semantics).

    Attributes:
        max_new_tokens: how many tokens to add (None: fill the rest of the context).
        do_sample, temperature, top_k, top_p, min_p, repetition_penalty: token selection, with
            ``transformers``' semantics and processor order (:mod:`lens.generation.sampling`); greedy
            when ``do_sample=False``.
        num_beams, length_penalty, early_stopping: beam search as ``transformers`` runs it
            (``generate`` only).
        stop_at_eos, eos_token_id: stop a row at an EOS (default: the tokenizer's ids).
        prepend_bos, padding_side: how string prompts are tokenized (right padding is moved left).
        seed: seeds a private ``torch.Generator`` for sampling (the global RNG is left alone).
        use_past_kv_cache: False recomputes the whole sequence each step (same logits, slower).
        kv_cache_dtype: None (the model's dtype), ``"int8"`` or ``"int4"`` (grouped float16 scales; the model's
            ``d_head`` must be even and a multiple of ``min(32, d_head)``, checked when the cache is allocated).
        return_type: ``"input"`` (same kind as the prompt), ``"str"`` or ``"tokens"``.
        output_logprobs: also return each generated token's log-probability.
        return_cache, names_filter: also return an ``ActivationCache`` of the hooks ``names_filter``
            selects, over every position (``generate`` only, not with beams).
        verbose: show a tqdm progress bar.
        prompt_lookup_num_tokens, max_matching_ngram_size: speculative decoding with proposals copied from the
            prompt and the text so far (the continuation of the latest ``max_matching_ngram_size``-gram's first
            earlier occurrence, up to ``prompt_lookup_num_tokens`` tokens), as Hugging Face's prompt lookup.
        assistant_model, num_assistant_tokens, num_assistant_tokens_schedule: speculative decoding with a small
            draft model of the same vocabulary proposing ``num_assistant_tokens`` tokens a step (``"heuristic"``:
            +2 after a fully accepted proposal, -1 otherwise, within [1, 2 x the start]; ``"constant"``).
            Greedy output equals plain greedy decoding; sampling keeps the exact distribution
            (:mod:`lens.generation.speculative`).
        return_stats: also return :class:`~lens.generation.speculative.SpeculativeStats` (proposed, accepted,
            forwards) as ``.stats`` of the output.
        output_trace, trace_top_k: also return a per-step :class:`~lens.generation.trace.GenerationTrace`
            (chosen token, its probability, the ``trace_top_k`` most likely alternatives before and after the
            sampler's filters, proposals) as ``.trace`` of the output (not with beams; ``max_new_tokens=0``
            gives a trace of ``steps = 0``).
    """

    max_new_tokens: int | None = None
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    stop_at_eos: bool = True
    eos_token_id: int | list[int] | None = None
    prepend_bos: bool | None = None
    padding_side: str = "left"
    seed: int | None = None
    use_past_kv_cache: bool = True
    kv_cache_dtype: str | None = None
    return_type: str = "input"
    output_logprobs: bool = False
    return_cache: bool = False
    names_filter: Any = None
    verbose: bool = False
    prompt_lookup_num_tokens: int | None = None
    max_matching_ngram_size: int = 2
    assistant_model: Any = None
    num_assistant_tokens: int = 5
    num_assistant_tokens_schedule: str = "heuristic"
    return_stats: bool = False
    output_trace: bool = False
    trace_top_k: int = 5

    def __init__(self, **settings: Any) -> None:
        check_names(settings)
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, settings.get(f.name, f.default))
        self._validate()

    def replace(self, **overrides: Any) -> GenerationConfig:
        """A copy with ``overrides`` applied (validated like a new config)."""
        check_names(overrides)
        return GenerationConfig(**{**self.as_dict(), **overrides})

    def as_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (field name -> value)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def sampling(self) -> SamplingConfig:
        """The token-selection part, as :class:`lens.generation.sampling.SamplingConfig`."""
        return SamplingConfig(
            do_sample=self.do_sample,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
        )

    def _validate(self) -> None:
        self.sampling  # noqa: B018 -- SamplingConfig validates the token-selection settings
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("num_beams", int_arg("num_beams", self.num_beams, 1))
        if self.num_beams > 1 and self.do_sample:
            raise ValueError("beam sampling (num_beams > 1 with do_sample=True) is not supported; use one or the other")
        if isinstance(self.length_penalty, bool) or not isinstance(self.length_penalty, numbers.Real):
            raise TypeError(f"length_penalty must be a real number, got {self.length_penalty!r}")
        set_("length_penalty", float(self.length_penalty))
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if self.max_new_tokens is not None:
            set_("max_new_tokens", int_arg("max_new_tokens", self.max_new_tokens, 0))
        if self.return_type not in RETURN_TYPES:
            raise ValueError(f"return_type must be one of {RETURN_TYPES}, got {self.return_type!r}")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {self.kv_cache_dtype!r}")
        for name in ("stop_at_eos", "use_past_kv_cache", "output_logprobs", "return_cache", "verbose"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.prepend_bos is not None and not isinstance(self.prepend_bos, bool):
            raise TypeError(f"prepend_bos must be None or a bool, got {self.prepend_bos!r}")
        if self.kv_cache_dtype is not None and not self.use_past_kv_cache:
            raise ValueError(f"kv_cache_dtype={self.kv_cache_dtype!r} needs use_past_kv_cache=True")
        if self.seed is not None:
            set_("seed", int_arg("seed", self.seed, 0))
        if self.eos_token_id is not None:
            ids = [self.eos_token_id] if isinstance(self.eos_token_id, numbers.Integral) else self.eos_token_id
            if isinstance(self.eos_token_id, bool) or not isinstance(ids, (list, tuple)) or not ids:
                raise TypeError(f"eos_token_id must be an int or a non-empty list of ints, got {self.eos_token_id!r}")
            set_("eos_token_id", [int_arg("eos_token_id", i, 0) for i in ids])
        if self.names_filter is not None and not self.return_cache:
            raise ValueError("names_filter selects what return_cache=True records; set return_cache=True")
        if self.return_cache and self.num_beams > 1:
            raise ValueError("return_cache=True is not supported with beam search (num_beams > 1)")
        self._validate_speculative()

    @property
    def speculative(self) -> bool:
        """True when a draft (prompt lookup or an assistant model) proposes tokens."""
        return self.prompt_lookup_num_tokens is not None or self.assistant_model is not None

    def _validate_speculative(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        for name in ("return_stats", "output_trace"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        set_("trace_top_k", int_arg("trace_top_k", self.trace_top_k, 1))
        if self.output_trace and self.num_beams > 1:
            raise ValueError(f"output_trace=True is not supported with beam search (num_beams={self.num_beams})")
        set_("max_matching_ngram_size", int_arg("max_matching_ngram_size", self.max_matching_ngram_size, 1))
        set_("num_assistant_tokens", int_arg("num_assistant_tokens", self.num_assistant_tokens, 1))
        if self.num_assistant_tokens_schedule not in ASSISTANT_SCHEDULES:
            raise ValueError(
                f"num_assistant_tokens_schedule must be one of {ASSISTANT_SCHEDULES}, "
                f"got {self.num_assistant_tokens_schedule!r}"
            )
        if self.prompt_lookup_num_tokens is not None:
            set_("prompt_lookup_num_tokens", int_arg("prompt_lookup_num_tokens", self.prompt_lookup_num_tokens, 1))
        if self.assistant_model is not None:
            if not callable(getattr(self.assistant_model, "decode_step", None)):
                kind = type(self.assistant_model).__name__
                raise TypeError(f"assistant_model must be a lens model (with decode_step), got {kind}")
            if self.prompt_lookup_num_tokens is not None:
                raise ValueError("pass prompt_lookup_num_tokens or assistant_model, not both")
        if not self.speculative:
            return
        name = "prompt_lookup_num_tokens" if self.assistant_model is None else "assistant_model"
        if self.num_beams > 1:
            raise ValueError(f"{name} (speculative decoding) does not support beam search; num_beams must be 1, "
                             f"got {self.num_beams}")  # fmt: skip
        if not self.use_past_kv_cache:
            raise ValueError(f"{name} (speculative decoding) needs use_past_kv_cache=True")


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(GenerationConfig))


def check_names(settings: dict[str, Any]) -> None:
    """``TypeError`` for the first name in ``settings`` that is not a generation setting, naming the closest."""
    for name in settings:
        if name not in FIELDS:
            close = difflib.get_close_matches(name, FIELDS, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid settings: {', '.join(FIELDS)}"
            raise TypeError(f"unknown generation setting {name!r}{hint}")


def resolve(config: GenerationConfig | None, settings: dict[str, Any]) -> GenerationConfig:
    """The call's config: ``config`` (or the defaults) with ``settings`` applied on top."""
    if config is None:
        return GenerationConfig(**settings)
    if not isinstance(config, GenerationConfig):
        raise TypeError(f"config must be a GenerationConfig, got {type(config).__name__}")
    return config.replace(**settings) if settings else config
