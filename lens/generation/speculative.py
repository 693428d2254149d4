"""Speculative decoding: proposals verified several tokens per forward, with the output of plain decoding.

A draft proposes up to ``K`` next tokens; one forward of the target over the last accepted token and the
proposals, ``model.decode_step(tokens, cache, logits_to_keep=K + 1)`` (the ordinary forward through the
KV cache, so hooks fire), gives the target's logits at every proposed position. Two drafts:

* **prompt lookup** (``prompt_lookup_num_tokens=N``, Hugging Face's prompt-lookup decoding): the tokens that
  followed the first earlier occurrence of the sequence's last ``n``-gram (``n`` from
  ``max_matching_ngram_size`` down to 1), in the prompt or the text generated so far; no second model;
* **an assistant model** (``assistant_model=small``, same vocabulary): ``K`` one-token steps of the small
  model with its own KV cache; ``K`` adapts (``"heuristic"``: +2 after a fully accepted proposal, -1
  otherwise, as Hugging Face's schedule, within [1, 2 x ``num_assistant_tokens``]).

Acceptance:

* **greedy**: the longest prefix of the proposal that equals the target's own choices (argmax after the
  repetition penalty, whose history includes the proposed prefix), plus the target's token after it, so the
  output is plain greedy decoding's (up to float rounding: a verification forward computes the logits of
  K + 1 positions at once, so a near tie could break differently);
* **sampling**: the rejection rule of Leviathan et al. / Chen et al.: proposal ``d`` drawn from the draft's
  distribution ``q`` (the assistant's processed distribution, or a point mass for prompt lookup) is kept
  with probability ``min(1, p(d) / q(d))``, ``p`` being the target's distribution after the same
  processors as plain sampling; on the first rejection a token is drawn from ``norm(max(0, p - q))``, and
  after a fully accepted proposal one more from ``p``. Each output token is then distributed exactly as
  under plain sampling.

Rows of a batch (left padding included) are verified together and all keep the shortest accepted prefix
among unfinished rows (accepting fewer tokens than allowed keeps both rules exact). Rejected positions are
rolled back with :meth:`KVCache.truncate` (offsets only, no copies); sliding-window ring buffers get
``K`` spare slots so a rollback never loses a key inside the window. With ``kv_cache_dtype="int8"`` the
proposed tokens attend to each other's keys at full precision, as prompt tokens do (plain decoding reads
them back quantized), so tokens can differ from plain int8 decoding where logits are within quantization
error of a tie. ``return_cache=True`` falls back to plain decoding (its recording needs one position per
step); other hooks see the verification forwards, ``pos = K + 1`` positions, rejected proposals included.

>>> out = model.generate(code_prompt, 100, prompt_lookup_num_tokens=10, return_stats=True)
>>> out.stats.acceptance_rate, out.stats.forwards
>>> model.generate("def ", 50, assistant_model=small_model, do_sample=True, top_p=0.9, seed=0)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lens.components.rotary import original_context, rope_kind
from lens.generation.kv_cache import KVCache
from lens.generation.loop import SampleRun
from lens.generation.plan import GenerationPlan


@dataclass
class SpeculativeStats:
    """Counts over one ``generate`` call (``return_stats=True``); rows of a batch are summed.

    Attributes:
        proposed: draft tokens verified (unfinished rows only).
        accepted: proposed tokens that are in the output.
        forwards: target model forwards, the prefill included.
        draft_forwards: assistant model forwards (0 for prompt lookup and plain decoding).
        steps: tokens generated per row (the output's new length).
    """

    proposed: int = 0
    accepted: int = 0
    forwards: int = 0
    draft_forwards: int = 0
    steps: int = 0

    @property
    def acceptance_rate(self) -> float:
        """``accepted / proposed`` (0 when nothing was proposed)."""
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_forward(self) -> float:
        """Generated tokens per row and target forward after the prefill (1.0 for plain decoding)."""
        return self.steps / max(self.forwards - 1, 1) if self.forwards > 1 else float(self.steps)


def _length_switch(cfg: Any) -> tuple[str, int] | None:
    """(kind, length) of a rotary scaling whose tables depend on the sequence length, else None."""
    if cfg.positional != "rotary":
        return None
    kind = rope_kind(cfg.rope_scaling)
    if kind == "longrope":
        return kind, original_context(cfg.rope_scaling)
    if kind == "dynamic":
        return kind, int(cfg.rope_scaling["max_position_embeddings"])
    return None


class PromptLookup:
    """Proposals copied from the sequence itself (Hugging Face's ``PromptLookupCandidateGenerator`` rule)."""

    def __init__(self, run: SpeculativeRun, num_tokens: int, max_ngram: int):
        self.run, self.k, self.max_ngram = run, num_tokens, max_ngram
        mask = run.plan.mask
        self.starts = [0] * run.plan.tokens.shape[0] if mask is None else (~mask).sum(-1).tolist()

    def propose(
        self, t: int, k: int, live: list[bool]
    ) -> tuple[Int[Tensor, "batch k"], Float[Tensor, "batch k vocab"] | None, list[int]]:
        """(proposal [batch, K], None (a point-mass draft), per-row lengths) for positions ``t, t + 1, ...``."""
        out, found = self.run.out, []
        for row, start in enumerate(self.starts):
            seq = out[row, start:t]
            cont = seq[:0]
            if live[row] and k > 0:
                for n in range(min(self.max_ngram, seq.shape[0] - 1), 0, -1):
                    windows = seq[:-1].unfold(0, n, 1)  # every n-gram but the last one itself
                    hits = (windows == seq[-n:]).all(-1).nonzero()
                    if hits.numel():
                        first = int(hits[0, 0]) + n
                        cont = seq[first : first + k]
                        break
            found.append(cont)
        lengths = [c.shape[0] for c in found]
        width = max(lengths, default=0)
        proposal = torch.full((len(found), width), self.run.plan.fill_id, dtype=torch.long, device=out.device)
        for row, cont in enumerate(found):
            proposal[row, : cont.shape[0]] = cont
        return proposal, None, lengths

    def accepted(self, n: int, k: int) -> None:
        pass


class Assistant:
    """A small model of the same vocabulary proposing ``k`` tokens, one decode step each, with its own cache."""

    def __init__(self, run: SpeculativeRun, model: Any, k: int, schedule: str):
        self.run, self.model, self.k, self.schedule = run, model, k, schedule
        self.k_max = 2 * k
        self.forwards = 0
        plan = run.plan
        b, total = plan.tokens.shape[0], plan.prompt_len + plan.max_new
        self.cache = KVCache.for_model(model, b, total, spare=self.k_max)
        self.device = model.embed.weight.device

    def _step(self, tokens: Tensor, mask: Tensor | None) -> Tensor:
        self.forwards += 1
        mask = None if mask is None else mask.to(self.device)
        return self.model.decode_step(tokens.to(self.device), self.cache, attention_mask=mask)

    def propose(
        self, t: int, k: int, live: list[bool]
    ) -> tuple[Int[Tensor, "batch k"], Float[Tensor, "batch k vocab"] | None, list[int]]:
        """(proposal [batch, k], q [batch, k, vocab] when sampling, lengths) for positions ``t, ...``."""
        run = self.run
        b = run.out.shape[0]
        if k == 0:
            return run.out[:, t:t], None, [0] * b
        off = self.cache.offset  # catch up on the tokens it has not seen (the prompt, the last accepted ones)
        mask = None if run.key_mask is None else run.key_mask[:, off:t]
        logits = self._step(run.out[:, off:t], mask).to(run.out.device)
        sampling, qs = run.plan.sampling, []
        for j in range(k):
            scores = run._scores(logits, t + j)
            if sampling.do_sample:
                q = scores.softmax(-1)
                d = torch.multinomial(q, 1, generator=run.plan.generator).squeeze(1)
                qs.append(q)
            else:
                d = scores.argmax(-1)
            run.out[:, t + j] = d  # the history of the next proposal's repetition penalty
            if j + 1 < k:
                logits = self._step(d[:, None], None).to(run.out.device)
        proposal = run.out[:, t : t + k].clone()
        return proposal, torch.stack(qs, 1) if qs else None, [k] * b

    def accepted(self, n: int, k: int) -> None:
        """Roll the draft's cache back to the accepted tokens; adapt ``k``."""
        t_new = self.run.t
        if self.cache.offset > t_new - 1:
            self.cache.truncate(t_new - 1)
        if self.schedule == "heuristic" and k > 0:
            self.k = min(self.k + 2, self.k_max) if n == k else max(self.k - 1, 1)


class SpeculativeRun(SampleRun):
    """:class:`SampleRun` with speculative steps: iterating yields each accepted token as ``(tokens, live)``."""

    def __init__(self, model: Any, plan: GenerationPlan):
        super().__init__(model, plan, None)
        if plan.assistant_model is not None:
            self.draft: PromptLookup | Assistant = Assistant(
                self, plan.assistant_model, plan.num_assistant_tokens, plan.num_assistant_tokens_schedule
            )
            self.spare = self.draft.k_max
        else:
            self.draft = PromptLookup(self, plan.prompt_lookup_num_tokens, plan.max_matching_ngram_size)
            self.spare = plan.prompt_lookup_num_tokens
        self.stats = SpeculativeStats()
        self.switch = _length_switch(model.cfg)
        self.t = 0

    def _limit(self, k: int) -> int:
        """``k`` capped so the verification uses the rotary tables plain decoding would (length-dependent rope)."""
        if self.switch is None:
            return k
        kind, length = self.switch
        t = self.t
        if t > length:  # past the switch: longrope's tables are fixed again; dynamic NTK's change every step
            return k if kind == "longrope" else 0
        return min(k, length - t)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        plan = self.plan
        P = plan.prompt_len
        with torch.inference_mode():
            self._setup()
            if plan.max_new == 0:
                return
            logits = self._forward(plan.tokens, plan.mask, self.cache, P, P)
            first = self._select(logits, P)
        bar = self._progress()
        try:
            self.steps, self.t = 1, P + 1
            if bar is not None:
                bar.update(1)
            yield first
            while not self.done and self.t < P + plan.max_new:
                with torch.inference_mode():
                    new = self._step()
                for item in new:
                    self.steps += 1
                    if bar is not None:
                        bar.update(1)
                    yield item
        finally:
            if bar is not None:
                bar.close()
            self.stats.forwards, self.stats.steps = self.forwards, self.steps
            self.stats.draft_forwards = getattr(self.draft, "forwards", 0)

    def _step(self) -> list[tuple[Tensor, Tensor]]:
        """Propose, verify, accept: the new tokens (at least one), as ``(tokens, live)`` per position."""
        plan, t, cache = self.plan, self.t, self.cache
        if self.refresh_at is not None and t > self.refresh_at >= cache.offset:  # longrope's refill: a plain step
            logits = self._feed(self.out[:, t - 1], t - 1)
            self.t += 1
            self.draft.accepted(0, 0)
            return [self._select(logits, t)]
        live_rows = self.unfinished.tolist()
        k = self._limit(min(self.draft.k, plan.prompt_len + plan.max_new - t - 1))
        proposal, q, lengths = self.draft.propose(t, k, live_rows)
        K = proposal.shape[1]
        self.out[:, t : t + K] = proposal  # histories of the repetition penalty at each proposed position
        tokens = torch.cat((self.out[:, t - 1 : t], proposal), 1)
        self.forwards += 1
        logits = self.model.decode_step(tokens, cache, logits_to_keep=K + 1)  # [b, K + 1, vocab]
        scores = [self._scores(logits[:, j], t + j) for j in range(K + 1)]
        dev = tokens.device
        has = torch.arange(K, device=dev)[None, :] < torch.tensor(lengths, device=dev)[:, None]  # [b, K]
        if plan.sampling.do_sample:
            probs = torch.stack(scores, 1).softmax(-1)  # p at each position [b, K + 1, vocab]
            p_d = probs[:, :K].gather(2, proposal[..., None]).squeeze(2)
            q_d = torch.ones_like(p_d) if q is None else q.gather(2, proposal[..., None]).squeeze(2)
            u = torch.rand(p_d.shape, generator=plan.generator, device=dev)
            ok = has & (u * q_d < p_d)
        else:
            choice = torch.stack([plan.sampling.sample(s) for s in scores], 1)  # greedy choices [b, K + 1]
            ok = has & (proposal == choice[:, :K])
        n_row = ok.long().cumprod(1).sum(1)  # accepted prefix per row
        n = self._shared_prefix(n_row, proposal, live_rows, K)
        if plan.sampling.do_sample:
            p_n = probs[:, n]
            if n < K:  # the residual norm(max(0, p - q)) where the row rejected at n (q = 0 without a proposal)
                q_n = torch.zeros_like(p_n) if q is None else q[:, n]
                if q is None:
                    q_n.scatter_(1, proposal[:, n : n + 1], 1.0)
                q_n = torch.where(has[:, n : n + 1], q_n, 0.0)
                resid = (p_n - q_n).clamp_min(0)
                total = resid.sum(-1, keepdim=True)
                p_n = torch.where(total > 0, resid / total.clamp_min(1e-30), p_n)
            last = torch.multinomial(p_n, 1, generator=plan.generator).squeeze(1)
            if n < K:
                last = torch.where(n_row > n, proposal[:, n], last)
        else:
            last = choice[:, n]
        new_tokens = torch.cat((proposal[:, :n], last[:, None]), 1)
        live = torch.tensor(live_rows, device=dev)
        self.stats.proposed += int(torch.tensor(lengths, device=dev)[live].sum())
        self.stats.accepted += int(n_row.clamp_max(n + 1)[live].sum())
        out = []
        for j in range(n + 1):
            proposed = proposal[:, j] if j < K else None
            was = None if proposed is None else has[:, j] & (n_row > j)
            if proposed is not None:
                proposed = torch.where(has[:, j], proposed, -1)
            out.append(self._commit(new_tokens[:, j], logits[:, j], scores[j], t + j, proposed, was))
            if self.done:
                break
        self.t = t + len(out)
        if not self.done:
            cache.truncate(self.t - 1)
        self.draft.accepted(n, K)
        return out

    def _shared_prefix(
        self, n_row: Int[Tensor, " batch"], proposal: Int[Tensor, "batch k"], live: list[bool], K: int
    ) -> int:
        """The accepted length all rows keep: the shortest among unfinished rows whose accepted tokens hold no EOS."""
        eos = self.plan.eos
        bound, finishing = [], []
        for row, (n_i, alive) in enumerate(zip(n_row.tolist(), live)):
            if not alive:
                continue
            if eos is not None and n_i:
                hit = torch.isin(proposal[row, :n_i], eos).nonzero()
                if hit.numel():  # the row ends at its EOS whatever comes after it
                    finishing.append(int(hit[0, 0]))
                    continue
            bound.append(n_i)
        if bound:
            return min(bound)
        return min(max(finishing, default=0), K)
