"""``generate(..., output_trace=True)``: the per-step token trace, checked against an uncached oracle.

Oracle: one full forward ``model(output, attention_mask=...)`` over the returned sequence; for each generated
position ``t`` the raw distribution is ``softmax(logits[t - 1])`` and the sampler's is ``softmax`` of
``GenerationConfig(...).sampling.process(logits[t - 1], output[:, :t], mask[:, :t])`` (what the plan builds).
Every field of the trace (top ids, probabilities before and after the filters, the chosen token's probability,
the tokens, the live flags) must equal what the oracle gives, for greedy decoding, seeded sampling with every
filter, left-padded batches with EOS stopping, several ``trace_top_k``. Speculative decoding (prompt lookup, an
assistant model) must give plain decoding's trace, with ``proposed`` / ``accepted`` consistent with the tokens and
with ``out.stats``. Also: streaming, ``max_new_tokens=0`` and bad input.
"""

from __future__ import annotations

import pytest
import torch

import lens
from lens.generation import GenerationConfig
from tests.generation._hf import pair
from tests.generation.test_speculative import repeating_batch

N_NEW = 14
ATOL = 1e-5


@pytest.fixture(scope="module")
def model() -> lens.HookedTransformer:
    return pair("LlamaForCausalLM")[1]


@pytest.fixture(scope="module")
def byte_model() -> lens.HookedTransformer:
    """A model with a tokenizer, so the fill token after EOS (its pad, 258) differs from every EOS."""
    cfg = lens.TransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_vocab=259, n_ctx=64, positional="rotary", normalization="RMS",
        act_fn="silu", gated_mlp=True, n_key_value_heads=2,
    )  # fmt: skip
    m = lens.HookedTransformer(cfg, tokenizer=lens.Tokenizer.byte_level(), seed=5)
    with torch.no_grad():
        m.unembed.weight.mul_(4)  # peaked enough that greedy rows repeat and hit an EOS
    return m.eval()


def oracle(model, out, mask, prompt_len: int, **settings) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw, processed) distributions [batch, steps, vocab] at each generated position, from one uncached forward."""
    n_new = out.shape[1] - prompt_len
    full = torch.ones_like(out) if mask is None else torch.cat((mask, mask.new_ones(out.shape[0], n_new)), 1)
    logits = model(out, attention_mask=full).float()
    sampling = GenerationConfig(**settings).sampling
    raw, after = [], []
    for t in range(prompt_len, out.shape[1]):
        raw.append(logits[:, t - 1].softmax(-1))
        after.append(sampling.process(logits[:, t - 1], out[:, :t], full[:, :t]).softmax(-1))
    return torch.stack(raw, 1), torch.stack(after, 1)


def check_against_oracle(model, trace, out, mask, prompt_len: int, k: int, **settings) -> tuple[torch.Tensor, ...]:
    raw, after = oracle(model, out, mask, prompt_len, **settings)
    b, steps = out.shape[0], out.shape[1] - prompt_len
    k = min(k, raw.shape[-1])
    assert trace.steps == steps
    assert trace.tokens.shape == trace.token_probs.shape == trace.live.shape == (b, steps)
    assert trace.top_ids.shape == trace.top_probs_raw.shape == trace.top_probs.shape == (b, steps, k)
    assert torch.equal(trace.tokens, out[:, prompt_len:])
    live = trace.live
    top = raw.topk(k, dim=-1)
    assert torch.equal(trace.top_ids[live], top.indices[live])
    torch.testing.assert_close(trace.top_probs_raw[live], top.values[live], atol=ATOL, rtol=0)
    torch.testing.assert_close(trace.top_probs[live], after.gather(2, top.indices)[live], atol=ATOL, rtol=0)
    chosen = after.gather(2, trace.tokens[..., None]).squeeze(2)
    torch.testing.assert_close(trace.token_probs[live], chosen[live], atol=ATOL, rtol=0)
    # after a row's EOS: the fill token everywhere, probability 0 (as output_logprobs)
    assert (trace.top_ids[~live] == trace.tokens[~live][:, None]).all()
    for probs in (trace.token_probs, trace.top_probs_raw, trace.top_probs):
        assert (probs[~live] == 0).all()
    return raw, after


def test_greedy_trace_is_the_models_distribution(model):
    tokens, mask = repeating_batch()
    out = model.generate(tokens, N_NEW, attention_mask=mask, stop_at_eos=False, output_trace=True)
    assert out.logprobs is None and out.stats is None and out.cache is None
    tr = out.trace
    raw, after = check_against_oracle(model, tr, out.output, mask, 12, 5)
    torch.testing.assert_close(after, raw, atol=0, rtol=0)  # greedy, no penalty: nothing filters
    assert torch.equal(tr.tokens, tr.top_ids[..., 0])  # greedy picks the most likely token
    torch.testing.assert_close(tr.token_probs, tr.top_probs_raw[..., 0], atol=0, rtol=0)
    assert tr.live.all() and (tr.proposed == -1).all() and not tr.accepted.any()


def test_greedy_with_repetition_penalty(model):
    tokens, mask = repeating_batch()
    settings = dict(repetition_penalty=1.8)
    out = model.generate(tokens, N_NEW, attention_mask=mask, stop_at_eos=False, output_trace=True, **settings)
    raw, after = check_against_oracle(model, out.trace, out.output, mask, 12, 5, **settings)
    assert torch.equal(out.trace.tokens, after.argmax(-1))  # the argmax after the penalty
    assert (after - raw).abs().amax() > 1e-2  # the test can fail: the penalty changed the distribution
    assert (out.trace.top_probs > 0).all()  # a penalty removes no token


def test_sampling_with_every_filter(model):
    tokens, mask = repeating_batch()
    settings = dict(do_sample=True, temperature=0.7, top_k=8, top_p=0.9, min_p=0.05, repetition_penalty=1.3)
    out = model.generate(tokens, N_NEW, attention_mask=mask, stop_at_eos=False, output_trace=True, trace_top_k=12,
                         seed=0, **settings)  # fmt: skip
    tr = out.trace
    raw, after = check_against_oracle(model, tr, out.output, mask, 12, 12, **settings)
    assert ((tr.top_probs > 0).sum(-1) <= 8).all()  # top-k 8: at least 4 of the 12 removed (exactly 0)
    assert (tr.token_probs > 0).all()  # every sampled token survived the filters
    kept = after > 0
    assert kept.sum(-1).max() <= 8 and (kept.sum(-1) < 8).any()  # top-p / min-p cut further
    torch.testing.assert_close(after.sum(-1), torch.ones(3, N_NEW), atol=1e-5, rtol=0)
    again = model.generate(tokens, N_NEW, attention_mask=mask, stop_at_eos=False, output_trace=True, trace_top_k=12,
                           seed=0, **settings)  # fmt: skip
    assert torch.equal(again.trace.tokens, tr.tokens) and torch.equal(again.trace.top_probs, tr.top_probs)


def test_eos_stops_rows_live_flags_and_fill(byte_model):
    prompts = ["abcab", "xyzxyzx", "hello hello"]
    free = byte_model.generate(prompts, N_NEW, stop_at_eos=False, return_type="tokens")
    P = free.shape[1] - N_NEW
    eos = int(free[0, P + 3])  # row 0's fourth generated token
    out = byte_model.generate(prompts, N_NEW, eos_token_id=eos, return_type="tokens", output_trace=True)
    tokens, mask = byte_model.to_tokens(prompts, padding_side="left", return_attention_mask=True)
    assert torch.equal(out.output[:, :P], tokens) and not mask.all()  # left padded
    tr = out.trace
    check_against_oracle(byte_model, tr, out.output, mask, P, 5)
    gen = out.output[:, P:]
    first_eos = torch.where((gen == eos).any(1), (gen == eos).int().argmax(1), N_NEW)
    assert first_eos[0] <= 3
    live = torch.arange(N_NEW)[None, :] <= first_eos[:, None]  # the EOS itself is live; after it, not
    assert torch.equal(tr.live, live)
    assert (tr.tokens[~tr.live] == byte_model.tokenizer.pad_token_id).all() and (~tr.live).any()


@pytest.mark.parametrize("k", [1, 3, 200])
def test_trace_top_k(model, k):
    tokens, mask = repeating_batch()
    out = model.generate(tokens, 6, attention_mask=mask, stop_at_eos=False, output_trace=True, trace_top_k=k,
                         repetition_penalty=1.5)  # fmt: skip
    check_against_oracle(model, out.trace, out.output, mask, 12, k, repetition_penalty=1.5)
    if k > model.cfg.d_vocab:  # the whole vocabulary, most likely first
        assert out.trace.top_ids.shape[-1] == model.cfg.d_vocab
        torch.testing.assert_close(out.trace.top_probs_raw.sum(-1), torch.ones(3, 6), atol=1e-5, rtol=0)
        torch.testing.assert_close(out.trace.top_probs.sum(-1), torch.ones(3, 6), atol=1e-5, rtol=0)


def test_without_the_kv_cache_and_with_return_cache(model):
    tokens, mask = repeating_batch()
    kw = dict(attention_mask=mask, stop_at_eos=False, output_trace=True, repetition_penalty=1.3)
    ref = model.generate(tokens, 8, **kw).trace
    for other in (dict(use_past_kv_cache=False), dict(return_cache=True, names_filter="hook_embed")):
        tr = model.generate(tokens, 8, **kw, **other).trace
        assert torch.equal(tr.tokens, ref.tokens) and torch.equal(tr.top_ids, ref.top_ids), other
        torch.testing.assert_close(tr.top_probs, ref.top_probs, atol=ATOL, rtol=0)


# -- speculative decoding ----------------------------------------------------------------------------------
def check_speculative(plain, spec, greedy: bool) -> None:
    """``spec``'s trace is ``plain``'s (same tokens and probabilities), with consistent proposals."""
    p, s = plain.trace, spec.trace
    assert torch.equal(s.tokens, p.tokens) and torch.equal(s.live, p.live) and torch.equal(s.top_ids, p.top_ids)
    for name in ("token_probs", "top_probs_raw", "top_probs"):
        torch.testing.assert_close(getattr(s, name), getattr(p, name), atol=1e-4, rtol=0, msg=name)
    assert (s.proposed >= 0).any() and s.accepted.any()
    assert (s.proposed[s.accepted] == s.tokens[s.accepted]).all()  # accepted: the proposal is the token
    assert (s.proposed[~s.live] == -1).all() and not s.accepted[~s.live].any()  # nothing after a row's EOS
    assert (s.proposed[:, 0] == -1).all()  # the first token comes from the prefill
    if greedy:  # greedy keeps a proposal exactly when it is the target's own choice
        assert torch.equal(s.accepted, (s.proposed == s.tokens) & s.live)
    # out.stats counts every verified proposal (the trace keeps output positions: none past the first
    # rejection) and the accepted ones, of rows unfinished when the step began
    assert int((s.proposed >= 0).sum()) <= spec.stats.proposed
    assert int(s.accepted.sum()) <= spec.stats.accepted


def test_prompt_lookup_trace_is_plain_greedys(model):
    tokens, mask = repeating_batch()
    kw = dict(attention_mask=mask, stop_at_eos=False, output_trace=True, return_stats=True)
    plain = model.generate(tokens, N_NEW, **kw)
    spec = model.generate(tokens, N_NEW, prompt_lookup_num_tokens=3, **kw)
    check_speculative(plain, spec, greedy=True)
    assert int(spec.trace.accepted.sum()) == spec.stats.accepted  # no EOS: every accepted token is output
    eos = int(plain.output[0, 12 + 5])  # EOS stopping: rows finish mid-proposal
    kw.update(stop_at_eos=True, eos_token_id=eos)
    plain = model.generate(tokens, N_NEW, **kw)
    spec = model.generate(tokens, N_NEW, prompt_lookup_num_tokens=3, **kw)
    assert not plain.trace.live.all()
    check_speculative(plain, spec, greedy=True)


def test_assistant_trace_is_plain_greedys(model):
    tokens, mask = repeating_batch()
    plain = model.generate(tokens, N_NEW, attention_mask=mask, stop_at_eos=False, output_trace=True)
    eos = int(plain.output[0, 12 + 5])
    for stop in (False, True):  # the model drafting for itself: every proposal is accepted
        kw = dict(attention_mask=mask, stop_at_eos=stop, eos_token_id=eos, output_trace=True, return_stats=True)
        ref = model.generate(tokens, N_NEW, **kw)
        spec = model.generate(tokens, N_NEW, assistant_model=model, num_assistant_tokens=3, **kw)
        check_speculative(ref, spec, greedy=True)
        assert torch.equal(spec.trace.accepted, spec.trace.proposed >= 0)
        if not stop:
            assert int(spec.trace.accepted.sum()) == spec.stats.accepted == spec.stats.proposed
    _, draft = pair("LlamaForCausalLM", seed=1)  # other weights: most proposals are rejected
    spec = model.generate(tokens, N_NEW, attention_mask=mask, stop_at_eos=False, output_trace=True,
                          assistant_model=draft, num_assistant_tokens=2)  # fmt: skip
    assert torch.equal(spec.trace.tokens, plain.trace.tokens)
    assert ((spec.trace.proposed >= 0) & ~spec.trace.accepted).any()


@pytest.mark.parametrize("draft", ["lookup", "assistant"])
def test_speculative_sampling_probabilities(model, draft):
    """The recorded probabilities are the target's (after the filters) for the output it sampled."""
    tokens, mask = repeating_batch()
    settings = dict(do_sample=True, temperature=0.9, top_k=20, top_p=0.95, repetition_penalty=1.2)
    how = dict(prompt_lookup_num_tokens=3) if draft == "lookup" else dict(assistant_model=model, num_assistant_tokens=3)
    out = model.generate(tokens, N_NEW, attention_mask=mask, stop_at_eos=False, output_trace=True, return_stats=True,
                         seed=0, trace_top_k=25, **settings, **how)  # fmt: skip
    tr = out.trace
    raw, after = oracle(model, out.output, mask, 12, **settings)
    torch.testing.assert_close(tr.top_probs_raw, raw.topk(25, -1).values, atol=1e-4, rtol=0)
    torch.testing.assert_close(tr.top_probs, after.gather(2, tr.top_ids), atol=1e-4, rtol=0)
    torch.testing.assert_close(tr.token_probs, after.gather(2, tr.tokens[..., None]).squeeze(2), atol=1e-4, rtol=0)
    assert (tr.token_probs > 0).all() and ((tr.top_probs > 0).sum(-1) <= 20).all()
    assert (tr.proposed[tr.accepted] == tr.tokens[tr.accepted]).all() and (tr.proposed >= 0).any()
    assert int(tr.accepted.sum()) == out.stats.accepted


# -- streaming -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["plain", "lookup", "assistant"])
def test_stream_trace_grows_and_equals_generates(model, how):
    """One step per yielded token, also where a speculative step accepts several tokens at once."""
    tokens, mask = repeating_batch()
    if how == "assistant":  # one row, the model drafting for itself: every step accepts 3 tokens + 1
        tokens, mask = tokens[:1], None
    drafts = dict(plain={}, lookup=dict(prompt_lookup_num_tokens=3), assistant=dict(assistant_model=model))
    kw = dict(attention_mask=mask, stop_at_eos=False, output_trace=True, **drafts[how])
    stream = model.generate_stream(tokens, N_NEW, **kw)
    assert stream.trace.steps == 0 and stream.trace.top_ids.shape == (tokens.shape[0], 0, 5)
    seen = []
    for i, item in enumerate(stream):
        tr = stream.trace
        assert tr.steps == i + 1 and torch.equal(tr.tokens[:, -1], item)
        if seen:
            assert torch.equal(tr.top_ids[:, :-1], seen[-1].top_ids)  # earlier steps do not change
        seen.append(tr)
    ref = model.generate(tokens, N_NEW, **kw, return_stats=True)
    assert how != "assistant" or ref.stats.forwards < N_NEW / 2  # the test can fail: several tokens a step
    ref, final = ref.trace, stream.trace
    for name in ("tokens", "top_ids", "proposed", "accepted", "live"):
        assert torch.equal(getattr(final, name), getattr(ref, name)), name
    for name in ("token_probs", "top_probs_raw", "top_probs"):
        torch.testing.assert_close(getattr(final, name), getattr(ref, name), atol=0, rtol=0, msg=name)
    assert model.generate_stream(tokens, 3, attention_mask=mask, stop_at_eos=False).trace is None  # not asked


# -- edge cases and bad input ------------------------------------------------------------------------------
def test_no_new_tokens_gives_an_empty_trace(model):
    tokens, mask = repeating_batch()
    for how in ({}, dict(prompt_lookup_num_tokens=3)):
        out = model.generate(tokens, 0, attention_mask=mask, stop_at_eos=False, output_trace=True, trace_top_k=4, **how)
        assert torch.equal(out.output, tokens)
        tr = out.trace
        assert tr.steps == 0 and tr.tokens.shape == tr.live.shape == tr.proposed.shape == (3, 0)
        assert tr.top_ids.shape == tr.top_probs.shape == tr.top_probs_raw.shape == (3, 0, 4)
        assert tr.tokens.dtype == tr.top_ids.dtype == torch.long and tr.live.dtype == torch.bool
    assert model.generate(tokens, 3, attention_mask=mask, stop_at_eos=False, return_stats=True).trace is None


def test_bad_trace_arguments(model):
    prompt = torch.tensor([[5, 6, 7]])
    bad = [
        (dict(output_trace=True, trace_top_k=0), ValueError, "trace_top_k must be >= 1, got 0"),
        (dict(output_trace=True, trace_top_k=2.5), TypeError, "trace_top_k must be an int"),
        (dict(output_trace="yes"), TypeError, "output_trace must be a bool"),
        (dict(output_trace=True, num_beams=2), ValueError, r"output_trace=True is not supported with beam search"),
    ]
    for kw, exc, msg in bad:
        with pytest.raises(exc, match=msg):
            model.generate(prompt, 3, stop_at_eos=False, **kw)
        with pytest.raises(exc, match=msg):
            GenerationConfig(**kw)
    assert model.generate(prompt, 3, stop_at_eos=False, num_beams=2, trace_top_k=3).shape == (1, 6)  # no trace asked
