"""Hugging Face-exact logits processing and next-token selection.

Each function here reproduces one ``transformers`` logits processor (repetition penalty, temperature,
top-k, top-p, min-p) as a pure tensor function, so generation with lens picks the same tokens as
``model.generate`` for the same logits, and a seeded sampler draws the same samples. Everything works on
the last-position logits of a batch, ``[batch, vocab]``, and returns a new tensor (inputs are never
modified in place). Filters mask removed tokens with ``-inf``.

The ``transformers`` semantics followed (checked against transformers 5.x
``generation/logits_process.py`` and ``generation/utils.py``):

* order: ``GenerationMixin._get_logits_processor`` appends the repetition penalty (which also runs in
  greedy decoding) before the sampling-only warpers, which it adds as temperature, top-k, top-p, min-p;
* a warper is only added when active: temperature ``!= 1``, top-k ``not in (None, 0)``, top-p ``< 1``,
  min-p ``is not None``;
* sampling is ``softmax`` then ``torch.multinomial(probs, 1)``; greedy is ``argmax`` (first max on ties).

Example:
    >>> logits = torch.tensor([[2.0, 1.0, 1.0, -1.0]])
    >>> top_k_filter(logits, 2)  # ties at the k-th value are kept
    tensor([[2., 1., 1., -inf]])
    >>> cfg = SamplingConfig(do_sample=True, temperature=0.7, top_p=0.9)
    >>> next_token = cfg.sample(cfg.process(logits), generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = [
    "SamplingConfig", "apply_repetition_penalty", "apply_temperature", "min_p_filter", "process_logits",
    "sample_next_token", "top_k_filter", "top_p_filter", "validate_sampling_args",
]  # fmt: skip

_NEG_INF = float("-inf")


def _require_real(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")


def validate_sampling_args(
    *,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    min_p: float | None,
    repetition_penalty: float,
) -> None:
    """Raise ``ValueError``/``TypeError`` for sampling settings ``generate`` cannot honour.

    Fails early and by name instead of producing NaN probabilities mid-generation. ``top_k`` of ``0``
    or ``None`` and ``top_p``/``min_p`` of ``None`` mean "off". Temperature is only checked when
    sampling, because greedy decoding ignores it (as Hugging Face does).

    Example:
        >>> validate_sampling_args(do_sample=True, temperature=0.0, top_k=None, top_p=None,
        ...                        min_p=None, repetition_penalty=1.0)
        Traceback (most recent call last):
        ValueError: temperature must be > 0 when do_sample=True, got 0.0; use do_sample=False for greedy
    """
    if not isinstance(do_sample, bool):
        raise TypeError(f"do_sample must be a bool, got {do_sample!r} ({type(do_sample).__name__})")
    _require_real("temperature", temperature)
    _require_real("repetition_penalty", repetition_penalty)
    if do_sample and not temperature > 0:
        raise ValueError(
            f"temperature must be > 0 when do_sample=True, got {temperature!r}; use do_sample=False for greedy"
        )
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):
            raise TypeError(f"top_k must be an int or None, got {top_k!r} ({type(top_k).__name__})")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 or None disables it), got {top_k!r}")
    if top_p is not None:
        _require_real("top_p", top_p)
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if min_p is not None:
        _require_real("min_p", min_p)
        if not 0 <= min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {min_p!r}")
    if not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty must be > 0 (1.0 disables it), got {repetition_penalty!r}")


def apply_repetition_penalty(
    logits: Float[Tensor, "batch vocab"],
    history: Int[Tensor, "batch t"],
    penalty: float,
    history_mask: Int[Tensor, "batch t"] | Bool[Tensor, "batch t"] | None = None,
) -> Float[Tensor, "batch vocab"]:
    """Penalise every token id already in ``history`` (CTRL-style, as ``RepetitionPenaltyLogitsProcessor``).

    Each distinct id seen in a row is penalised once, however often it occurs: a positive logit is
    divided by ``penalty`` and a negative one multiplied, so ``penalty > 1`` always makes repeats less
    likely. Positions where ``history_mask`` is 0 (padding) are ignored, so a pad id that only occurs as
    padding is left alone. Ids outside ``[0, vocab)`` are ignored (HF drops ids ``>= vocab`` the same way).
    ``penalty == 1.0`` returns ``logits`` itself.

    Example:
        >>> apply_repetition_penalty(torch.tensor([[2.0, -2.0, 2.0]]), torch.tensor([[0, 1, 1]]), 2.0)
        tensor([[ 1., -4.,  2.]])
    """
    _require_real("repetition_penalty", penalty)
    if not penalty > 0:
        raise ValueError(f"repetition_penalty must be > 0 (1.0 disables it), got {penalty!r}")
    if penalty == 1.0:
        return logits
    if logits.ndim != 2 or history.ndim != 2 or history.shape[0] != logits.shape[0]:
        raise ValueError(
            f"expected logits [batch, vocab] and history [batch, t], got {tuple(logits.shape)} "
            f"and {tuple(history.shape)}"
        )
    vocab = logits.shape[-1]
    ids = history.to(device=logits.device, dtype=torch.long)
    counted = (ids >= 0) & (ids < vocab)
    if history_mask is not None:
        if history_mask.shape != history.shape:
            raise ValueError(f"history_mask shape {tuple(history_mask.shape)} != history shape {tuple(history.shape)}")
        counted &= history_mask.to(logits.device) != 0
    # Uncounted positions point at an extra dummy column that is dropped afterwards.
    ids = torch.where(counted, ids, vocab)
    seen = torch.zeros(logits.shape[0], vocab + 1, dtype=torch.bool, device=logits.device)
    seen.scatter_(1, ids, True)
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen[:, :vocab], penalised, logits)


def apply_temperature(logits: Float[Tensor, "batch vocab"], temperature: float) -> Float[Tensor, "batch vocab"]:
    """Divide logits by ``temperature`` (``TemperatureLogitsWarper``); < 1 sharpens, > 1 flattens.

    Example:
        >>> apply_temperature(torch.tensor([[1.0, -2.0]]), 0.5)
        tensor([[ 2., -4.]])
    """
    _require_real("temperature", temperature)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return logits / temperature


def top_k_filter(logits: Float[Tensor, "batch vocab"], k: int | None) -> Float[Tensor, "batch vocab"]:
    """Keep tokens whose logit is >= the ``k``-th largest (``TopKLogitsWarper``), mask the rest to -inf.

    Like HF, ties with the ``k``-th value are all kept, so more than ``k`` tokens may survive; ``k`` larger
    than the vocabulary keeps everything, and ``k`` of 0 or ``None`` is a no-op.

    Example:
        >>> top_k_filter(torch.tensor([[3.0, 1.0, 2.0, 2.0]]), 2)
        tensor([[3., -inf, 2., 2.]])
    """
    if k is None or k == 0:
        return logits
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"top_k must be an int or None, got {k!r} ({type(k).__name__})")
    if k < 0:
        raise ValueError(f"top_k must be >= 0 (0 or None disables it), got {k!r}")
    kth_largest = logits.topk(min(int(k), logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, _NEG_INF)


def top_p_filter(logits: Float[Tensor, "batch vocab"], p: float) -> Float[Tensor, "batch vocab"]:
    """Nucleus filtering with ``TopPLogitsWarper``'s exact convention (``min_tokens_to_keep=1``).

    HF sorts ascending and removes each token whose cumulative probability, counted from the *least*
    likely token up to and including itself, is ``<= 1 - p``; the most likely token always survives.
    Hence the kept set is the smallest top set with mass ``>= p``, plus any token straddling the
    boundary. Among tied logits, which ones fall on the boundary follows ``torch.sort``'s (unstable)
    ascending order, matching HF bit for bit. ``p == 1`` still drops tokens whose probability
    underflows to exactly 0 (``process_logits`` skips ``p == 1`` entirely, like ``generate``).

    Example:
        >>> top_p_filter(torch.tensor([[0.0, 1.0, 3.0]]).log(), 0.7)
        tensor([[  -inf,   -inf, 1.0986]])
    """
    _require_real("top_p", p)
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {p!r}")
    ascending, order = torch.sort(logits, dim=-1, descending=False)
    mass_up_to = ascending.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = mass_up_to <= 1 - p
    drop_sorted[..., -1] = False  # min_tokens_to_keep=1: never drop the most likely token
    drop = torch.empty_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, _NEG_INF)


def min_p_filter(logits: Float[Tensor, "batch vocab"], min_p: float) -> Float[Tensor, "batch vocab"]:
    """Drop tokens less likely than ``min_p`` times the top token's probability (``MinPLogitsWarper``).

    The comparison is done in probability space (``probs < min_p * max(probs)``), exactly as HF does;
    the most likely token is always kept (``min_tokens_to_keep=1``), and ``min_p=0`` keeps everything.

    Example:
        >>> min_p_filter(torch.tensor([[4.0, 2.0, 1.0]]).log(), 0.5)
        tensor([[1.3863, 0.6931,   -inf]])
    """
    _require_real("min_p", min_p)
    if not 0 <= min_p <= 1:
        raise ValueError(f"min_p must be in [0, 1], got {min_p!r}")
    probs = logits.softmax(dim=-1)
    drop = probs < min_p * probs.amax(dim=-1, keepdim=True)
    drop.scatter_(-1, probs.argmax(dim=-1, keepdim=True), False)
    return logits.masked_fill(drop, _NEG_INF)


def process_logits(
    logits: Float[Tensor, "batch vocab"],
    history: Int[Tensor, "batch t"] | None = None,
    history_mask: Int[Tensor, "batch t"] | Bool[Tensor, "batch t"] | None = None,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
) -> Float[Tensor, "batch vocab"]:
    """Run the sampling processor chain in the order ``transformers``' ``generate`` builds it.

    ``GenerationMixin._get_logits_processor`` (transformers/generation/utils.py) appends the repetition
    penalty first (on raw logits), then, for sampling, temperature, top-k, top-p and min-p; each step is
    skipped when inactive exactly as there (temperature 1, top-k 0/None, top-p None or 1, min-p None).
    The repetition penalty needs ``history``; without it there is nothing to penalise. For greedy decoding
    use :class:`SamplingConfig`, which (like HF) applies only the penalty when ``do_sample=False``.
    HF's ``generate`` feeds float32 logits; pass float32 for bit-exact agreement.

    Example:
        >>> logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
        >>> process_logits(logits, torch.tensor([[0]]), repetition_penalty=2.0, top_k=2)
        tensor([[1., 1., -inf, -inf]])
    """
    validate_sampling_args(
        do_sample=True,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
    )
    if repetition_penalty != 1.0 and history is not None:
        logits = apply_repetition_penalty(logits, history, repetition_penalty, history_mask)
    if temperature != 1.0:
        logits = apply_temperature(logits, temperature)
    if top_k:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    if min_p is not None:
        logits = min_p_filter(logits, min_p)
    return logits


def sample_next_token(
    logits: Float[Tensor, "batch vocab"],
    *,
    do_sample: bool,
    generator: torch.Generator | None = None,
) -> Int[Tensor, " batch"]:
    """Pick one token per row: ``argmax`` when greedy, else a multinomial draw from ``softmax``.

    Mirrors HF's sample loop (``softmax`` in float32, then ``torch.multinomial(probs, 1)``), so the same
    RNG state gives the same tokens; pass a seeded ``generator`` for reproducible sampling independent
    of the global RNG. Greedy ties resolve to the lowest token id, as ``torch.argmax`` does in HF.

    Example:
        >>> sample_next_token(torch.tensor([[0.1, 2.0, -1.0]]), do_sample=False)
        tensor([1])
    """
    if not do_sample:  # max's indices are argmax's (first maximum, NaN counts as maximal), and faster on CPU
        return logits.max(dim=-1).indices
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


@dataclass(frozen=True)
class SamplingConfig:
    """Validated bundle of decoding settings with HF ``generate`` defaults and semantics.

    ``process`` applies the repetition penalty always and the warpers (temperature, top-k, top-p,
    min-p) only when ``do_sample`` is true, since HF adds warpers only for sampling: greedy decoding
    ignores them (with tied top logits a top-p filter could otherwise change the argmax).

    Example:
        >>> cfg = SamplingConfig(do_sample=True, top_k=50, top_p=0.95, repetition_penalty=1.1)
        >>> scores = cfg.process(torch.randn(2, 100), history=torch.tensor([[1, 2], [3, 3]]))
        >>> cfg.sample(scores, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([2])
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        validate_sampling_args(
            do_sample=self.do_sample,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
        )

    def process(
        self,
        logits: Float[Tensor, "batch vocab"],
        history: Int[Tensor, "batch t"] | None = None,
        history_mask: Int[Tensor, "batch t"] | Bool[Tensor, "batch t"] | None = None,
    ) -> Float[Tensor, "batch vocab"]:
        """Turn raw next-token logits into HF-identical scores for this config."""
        if not self.do_sample:
            if self.repetition_penalty == 1.0 or history is None:
                return logits
            return apply_repetition_penalty(logits, history, self.repetition_penalty, history_mask)
        return process_logits(
            logits,
            history,
            history_mask,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
        )

    def sample(
        self, scores: Float[Tensor, "batch vocab"], generator: torch.Generator | None = None
    ) -> Int[Tensor, " batch"]:
        """Select the next token from processed ``scores`` (greedy or sampled per ``do_sample``)."""
        return sample_next_token(scores, do_sample=self.do_sample, generator=generator)
