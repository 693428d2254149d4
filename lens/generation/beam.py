"""Beam search with ``transformers``' exact algorithm (``GenerationMixin._beam_search``, v4.50+/5.x).

Each prompt row becomes ``num_beams`` rows of one KV cache. At every step the ``num_beams x vocab``
continuations are scored by accumulated log-probability; the top ``K = max(2, 1 + n_eos) * num_beams``
are kept so that enough unfinished beams survive; candidates ending in EOS (or at the length limit)
among the top ``num_beams`` become finished hypotheses scored ``sum_logprob / gen_len ** length_penalty``;
the search stops by HF's ``early_stopping`` rule (False: when no running beam can still beat the
worst finished one, judged at the current length). The cache rows are reordered to follow the
surviving beams. Same weights, same tokens as ``hf_model.generate(num_beams=n, do_sample=False)``.

>>> model.generate(tokens, max_new_tokens=10, num_beams=4, stop_at_eos=False)
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lens.components.rotary import cache_refresh_length
from lens.generation.kv_cache import KVCache
from lens.generation.plan import GenerationPlan

_NEG = -1.0e9


def _gather(t: Tensor, idx: Int[Tensor, "batch k"]) -> Tensor:
    """``t[b, idx[b, j], ...]`` for ``t`` ``[batch, beams, ...]``."""
    while idx.ndim < t.ndim:
        idx = idx.unsqueeze(-1)
    return torch.take_along_dim(t, idx, dim=1)


def _improvable(
    unsatisfied: Tensor,
    running_scores: Float[Tensor, "batch beams"],
    beam_scores: Float[Tensor, "batch beams"],
    finished: Tensor,
    gen_len: int,
    max_new: int,
    early_stopping: bool | str,
    length_penalty: float,
) -> Tensor:
    """HF's ``_check_early_stop_heuristic``: can a running beam still beat the worst finished one?"""
    best_len = max_new if (early_stopping == "never" and length_penalty > 0.0) else gen_len
    best_running = running_scores[:, :1] / (best_len**length_penalty)
    worst_finished = torch.where(finished, beam_scores.min(dim=1, keepdim=True).values, _NEG)
    return unsatisfied & (best_running > worst_finished).any(dim=-1, keepdim=True)


@torch.inference_mode()
def beam_search(model: Any, plan: GenerationPlan) -> tuple[Tensor, Tensor, Tensor | None]:
    """Run beam search; returns (best sequence per row ``[batch, prompt + n]``, generated lengths,
    per-token log-probs ``[batch, n]`` or None)."""
    B, P = plan.tokens.shape
    nb, max_new = plan.num_beams, plan.max_new
    max_length, dev = P + max_new, plan.tokens.device
    lp_pow, early = plan.length_penalty, plan.early_stopping
    if max_new == 0:
        empty = torch.zeros(B, 0, device=dev) if plan.output_logprobs else None
        return plan.tokens.clone(), torch.zeros(B, dtype=torch.long, device=dev), empty
    n_eos = 0 if plan.eos is None else plan.eos.numel()
    keep = max(2, 1 + n_eos) * nb
    top_nb = torch.arange(keep, device=dev) < nb

    tokens = plan.tokens.repeat_interleave(nb, dim=0)
    mask = None if plan.mask is None else plan.mask.repeat_interleave(nb, dim=0)
    history_mask = None
    if mask is not None:
        history_mask = torch.ones(B * nb, max_length, dtype=torch.bool, device=dev)
        history_mask[:, :P] = mask

    running_seq = torch.full((B, nb, max_length), plan.fill_id, dtype=torch.long, device=dev)
    running_seq[:, :, :P] = tokens.view(B, nb, P)
    seqs = running_seq.clone()
    running_scores = torch.zeros(B, nb, device=dev)
    running_scores[:, 1:] = _NEG  # only the first beam's continuations count at the first step
    beam_scores = torch.full((B, nb), _NEG, device=dev)
    finished = torch.zeros(B, nb, dtype=torch.bool, device=dev)
    unsatisfied = torch.ones(B, 1, dtype=torch.bool, device=dev)
    running_idx = torch.full((B, nb, max_new), -1, dtype=torch.int32, device=dev)
    beam_idx = running_idx.clone()
    track_lp = plan.output_logprobs
    running_lp = torch.zeros(B, nb, max_new, device=dev) if track_lp else None
    token_lp = running_lp.clone() if track_lp else None
    batch_offset = torch.arange(B, device=dev)[:, None] * nb

    cache = KVCache.for_model(model, B * nb, max_length, plan.kv_cache_dtype) if plan.use_past_kv_cache else None
    logits = model.decode_step(tokens, cache, attention_mask=mask)
    refresh_at = cache_refresh_length(model.cfg)
    bar = None
    if plan.verbose:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_new, desc="beam search")
    cur = P
    while True:
        log_probs = torch.log_softmax(logits, dim=-1)
        hm = None if history_mask is None else history_mask[:, :cur]
        log_probs = plan.sampling.process(log_probs, running_seq[:, :, :cur].reshape(B * nb, cur), hm)
        vocab = log_probs.shape[-1]
        acc = (log_probs.view(B, nb, vocab) + running_scores[:, :, None]).view(B, nb * vocab)
        topk_lp, topk_flat = torch.topk(acc, k=keep)
        from_beam, ids = topk_flat // vocab, topk_flat % vocab
        topk_seq = _gather(running_seq, from_beam)
        topk_seq[:, :, cur] = ids
        topk_idx = _gather(running_idx, from_beam)
        topk_idx[:, :, cur - P] = (from_beam + batch_offset).to(torch.int32)
        if track_lp:
            topk_tok_lp = _gather(running_lp, from_beam)
            topk_tok_lp[:, :, cur - P] = log_probs.view(B, nb * vocab).gather(1, topk_flat)

        hits = torch.full_like(ids, cur + 1 >= max_length, dtype=torch.bool)
        if plan.eos is not None:
            hits |= torch.isin(ids, plan.eos)

        # the best num_beams unfinished candidates keep running
        run_lp = topk_lp + hits.float() * _NEG
        nxt = torch.topk(run_lp, k=nb).indices
        running_seq, running_scores = _gather(topk_seq, nxt), _gather(run_lp, nxt)
        running_idx = _gather(topk_idx, nxt)
        if track_lp:
            running_lp = _gather(topk_tok_lp, nxt)

        # finished candidates among the top num_beams join the hypotheses if they score high enough
        just_done = hits & top_nb[None, :]
        done_lp = topk_lp / ((cur + 1 - P) ** lp_pow)
        done_lp = done_lp + (finished.all(-1, keepdim=True) & (early is True)).float() * _NEG
        done_lp = done_lp + (~unsatisfied).float() * _NEG
        done_lp = done_lp + (~just_done).float() * _NEG
        merged_scores = torch.cat((beam_scores, done_lp), dim=1)
        best = torch.topk(merged_scores, k=nb).indices
        seqs = _gather(torch.cat((seqs, topk_seq), dim=1), best)
        beam_scores = _gather(merged_scores, best)
        beam_idx = _gather(torch.cat((beam_idx, topk_idx), dim=1), best)
        finished = _gather(torch.cat((finished, just_done), dim=1), best)
        if track_lp:
            token_lp = _gather(torch.cat((token_lp, topk_tok_lp), dim=1), best)

        cur += 1
        if bar is not None:
            bar.update(1)
        unsatisfied = _improvable(unsatisfied, running_scores, beam_scores, finished, cur - P, max_new, early, lp_pow)
        go_on = bool(unsatisfied.any()) and not (bool(finished.all()) and early is True) and not bool(hits.all())
        if not go_on:
            break
        if cache is not None and refresh_at is not None and cur > refresh_at >= cache.offset:
            cache.reset()  # longrope outgrew its short tables: refill from the beams' sequences (as in _SampleRun)
            flat = running_seq[:, :, :cur].reshape(B * nb, cur)
            logits = model.decode_step(
                flat, cache, attention_mask=None if history_mask is None else history_mask[:, :cur]
            )
        elif cache is not None:
            cache.reorder(running_idx[:, :, cur - 1 - P].reshape(-1).long())
            logits = model.decode_step(running_seq[:, :, cur - 1].reshape(B * nb, 1), cache)
        else:
            flat = running_seq[:, :, :cur].reshape(B * nb, cur)
            logits = model.decode_step(
                flat, None, attention_mask=None if history_mask is None else history_mask[:, :cur]
            )

    if bar is not None:
        bar.close()
    gen_len = (beam_idx[:, 0] >= 0).sum(-1)
    n = int(gen_len.max())
    out_lp = token_lp[:, 0, :n].clone() if track_lp else None
    return seqs[:, 0, : P + n].clone(), gen_len.clone(), out_lp
