"""Per-step token traces of ``generate(..., output_trace=True)``: what was chosen, and what else was likely.

Why: to see where a generation was certain and where it could have gone another way, and what the
sampler's filters (repetition penalty, temperature, top-k, top-p, min-p) did to the alternatives. For each
generated position the trace keeps the chosen token and its probability under the sampler's distribution,
the ``k`` most likely tokens of the raw distribution with their probability before (``softmax`` of the
logits) and after the sampler's processors (``softmax`` of the processed scores; 0 where a filter removed
the token), and, under speculative decoding, the token the draft proposed for the position and whether it
was accepted. Greedy decoding runs only the repetition penalty, so "after" is the penalised softmax.
:func:`lens.plot.generation_trace` draws it as a token-by-step heatmap.

>>> out = model.generate("def ", 20, do_sample=True, top_k=5, seed=0, output_trace=True)
>>> out.trace.tokens.shape, out.trace.top_ids.shape          # [batch, steps], [batch, steps, k]
>>> out.trace.top_probs_raw[0, 3], out.trace.top_probs[0, 3]   # before / after the filters at step 3
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


@dataclass
class GenerationTrace:
    """Per generated position of every row (``[batch, steps, ...]``; ``steps`` as in the output).

    After a row's EOS (``live`` False) ``tokens`` and every ``top_ids`` entry are the fill token and every
    probability is 0 (as ``output_logprobs`` gives 0 there).

    Attributes:
        tokens: the chosen token (the fill token after a row's EOS).
        token_probs: its probability under the sampler's distribution (after the processors).
        top_ids: the ``k`` most likely tokens before the processors, most likely first.
        top_probs_raw: their probability before the processors (``softmax`` of the logits).
        top_probs: their probability after the processors (0 for tokens a filter removed).
        proposed: the token a speculative draft proposed for the position, -1 where none was (and after a
            row's EOS). Only output positions are kept: proposals after the first rejected one are not here.
        accepted: whether the proposal was accepted (False where none was); then ``proposed == tokens``.
        live: False after a row's EOS.
    """

    tokens: Int[Tensor, "batch step"]
    token_probs: Float[Tensor, "batch step"]
    top_ids: Int[Tensor, "batch step k"]
    top_probs_raw: Float[Tensor, "batch step k"]
    top_probs: Float[Tensor, "batch step k"]
    proposed: Int[Tensor, "batch step"]
    accepted: Bool[Tensor, "batch step"]
    live: Bool[Tensor, "batch step"]

    @property
    def steps(self) -> int:
        return self.tokens.shape[1]


class TraceRecorder:
    """Collects one :class:`GenerationTrace` column per generated position (``batch`` rows, ``vocab`` logits)."""

    def __init__(self, k: int, batch: int, vocab: int, device: torch.device | str = "cpu"):
        self.k, self.batch, self.device = min(k, vocab), batch, device
        self.columns: list[tuple[Tensor, ...]] = []

    @torch.inference_mode()
    def add(
        self,
        logits: Float[Tensor, "batch vocab"],
        scores: Float[Tensor, "batch vocab"],
        chosen: Int[Tensor, " batch"],
        live: Bool[Tensor, " batch"],
        proposed: Int[Tensor, " batch"] | None = None,
        accepted: Bool[Tensor, " batch"] | None = None,
    ) -> None:
        """Record one position: raw ``logits``, the sampler's ``scores`` and the ``chosen`` token.

        Rows that are not ``live`` (finished before this position; ``chosen`` is the fill token) get the fill
        token as every alternative, probability 0 and no proposal, as ``output_logprobs`` gives 0 there: what
        the loop ran for a finished row is no distribution of interest (and differs between plain and
        speculative decoding).
        """
        raw = logits.float().softmax(-1)
        after = raw if scores is logits else scores.float().softmax(-1)
        top = raw.topk(min(self.k, raw.shape[-1]), dim=-1)
        b = chosen.shape[0]
        if proposed is None:
            proposed = torch.full((b,), -1, dtype=torch.long, device=chosen.device)
            accepted = torch.zeros(b, dtype=torch.bool, device=chosen.device)
        on = live[:, None]
        self.columns.append(
            (
                chosen.clone(),
                torch.where(live, after.gather(1, chosen[:, None]).squeeze(1), 0.0),
                torch.where(on, top.indices, chosen[:, None]),
                torch.where(on, top.values, 0.0),
                torch.where(on, after.gather(1, top.indices), 0.0),
                torch.where(live, proposed, -1),  # after a row's EOS there is no position to propose for
                accepted & live,
                live.clone(),
            )
        )

    def finish(self, steps: int | None = None) -> GenerationTrace:
        """The first ``steps`` columns (default all) stacked along ``step`` (ordinary tensors, outside inference
        mode); a stream asks for the positions it has yielded (a speculative step records several at once).

        With nothing recorded yet (``max_new_tokens=0``, or a stream not yet started) every field has
        ``steps = 0``: ``tokens`` ``[batch, 0]``, ``top_ids`` ``[batch, 0, k]``, ...
        """
        columns = self.columns if steps is None else self.columns[:steps]
        if not columns:
            b, k, dev = self.batch, self.k, self.device
            ids, probs = torch.zeros(b, 0, dtype=torch.long, device=dev), torch.zeros(b, 0, device=dev)
            flags = torch.zeros(b, 0, dtype=torch.bool, device=dev)
            top_ids, top_probs = ids[..., None].expand(b, 0, k).clone(), probs[..., None].expand(b, 0, k).clone()
            return GenerationTrace(ids, probs, top_ids, top_probs, top_probs.clone(), ids.clone(), flags, flags.clone())
        stacked = [torch.stack(parts, dim=1).clone() for parts in zip(*columns)]
        return GenerationTrace(*stacked)
