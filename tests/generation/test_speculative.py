"""Speculative decoding (prompt lookup, assistant models): greedy output equals plain greedy decoding.

Oracle: lens's plain greedy ``generate``, itself token-identical to ``transformers`` (test_generate_hf.py).
Every family, a left-padded batch of three prompts with EOS stopping plus each row alone, sliding-window ring
buffers that wrap (window 5, 16 new tokens), the int8 cache, max_new_tokens respected exactly, streaming,
what hooks see, the KV cache's rollback, and bad input.
"""

from __future__ import annotations

import pytest
import torch

import lens
from lens.generation import KVCache
from tests.generation._hf import archs, pair

N_NEW = 16  # longer than the sliding window (5): ring buffers wrap and roll back across the wrap


def repeating_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three left-padded prompts (lengths 12, 7, 10) that repeat themselves, so prompt lookup finds n-grams."""
    g = torch.Generator().manual_seed(7)
    base = torch.randint(3, 97, (3, 4), generator=g)
    tokens = torch.cat((base, base, base[:, :2], base[:, :2]), 1)  # [3, 12]
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, :5] = 0
    mask[2, :2] = 0
    return tokens.masked_fill(mask == 0, 0), mask


def pick_eos(model, tokens, mask) -> int:
    """A token plain greedy decoding emits mid-way in row 0, so EOS stopping is exercised."""
    out = model.generate(tokens, N_NEW, attention_mask=mask, stop_at_eos=False)
    return int(out[0, tokens.shape[1] + 5])


def check_same_as_plain(model, **speculative):
    tokens, mask = repeating_batch()
    eos = pick_eos(model, tokens, mask)
    plain = model.generate(tokens, N_NEW, attention_mask=mask, eos_token_id=eos)
    out = model.generate(tokens, N_NEW, attention_mask=mask, eos_token_id=eos, return_stats=True, **speculative)
    assert torch.equal(out.output, plain)
    assert out.stats.proposed > 0
    free = model.generate(tokens, N_NEW, attention_mask=mask, stop_at_eos=False, **speculative)
    assert torch.equal(free, model.generate(tokens, N_NEW, attention_mask=mask, stop_at_eos=False))
    for row in range(3):
        alone = tokens[row, mask[row].bool()]
        ref = model.generate(alone, N_NEW, eos_token_id=eos)
        assert torch.equal(model.generate(alone, N_NEW, eos_token_id=eos, **speculative), ref), row
    return out.stats


@pytest.mark.parametrize("arch", archs())
def test_prompt_lookup_greedy_equals_plain(arch):
    _, model = pair(arch)
    check_same_as_plain(model, prompt_lookup_num_tokens=3)


@pytest.mark.parametrize("arch", archs())
def test_assistant_greedy_equals_plain(arch):
    _, model = pair(arch)
    _, draft = pair(arch, seed=1)  # other weights: proposals are partly rejected
    check_same_as_plain(model, assistant_model=draft, num_assistant_tokens=3)


def test_qwen2_mixed_ring_and_full_layers():
    _, model = pair("Qwen2ForCausalLM", use_sliding_window=True, max_window_layers=1, sliding_window=4)
    check_same_as_plain(model, prompt_lookup_num_tokens=4)
    check_same_as_plain(model, assistant_model=model, num_assistant_tokens=4)


@pytest.mark.parametrize("arch", ["MistralForCausalLM", "GPT2LMHeadModel"])
def test_self_assistant_accepts_everything(arch):
    _, model = pair(arch)
    stats = check_same_as_plain(model, assistant_model=model, num_assistant_tokens=2)
    assert stats.accepted == stats.proposed  # the draft is the target: every proposal is its own greedy choice
    assert stats.forwards < stats.steps  # several tokens per forward


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "MistralForCausalLM"])
def test_int8_cache(arch):
    """Proposed tokens attend to each other at full precision (plain int8 decoding reads them back quantized),
    so tokens may differ from plain int8 decoding near ties (docs/generation.md); each one is still the argmax
    of the exact logits up to the int8 error (< 0.1 on these models: test_kv_cache.py), and stays so only if
    rolled-back keys never leak into later steps."""
    _, model = pair(arch)
    tokens, mask = repeating_batch()
    for kw in (dict(prompt_lookup_num_tokens=3), dict(assistant_model=model, num_assistant_tokens=3)):
        out = model.generate(tokens, N_NEW, attention_mask=mask, stop_at_eos=False, kv_cache_dtype="int8",
                             return_stats=True, **kw)  # fmt: skip
        assert out.stats.accepted > 0
        full_mask = torch.cat((mask, mask.new_ones(3, N_NEW)), 1)
        exact = model(out.output, attention_mask=full_mask)[:, 11:-1].float()
        chosen = exact.gather(2, out.output[:, 12:, None]).squeeze(2)
        assert (chosen >= exact.amax(-1) - 0.2).all(), kw


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "GPT2LMHeadModel"])
def test_int4_cache(arch):
    """As with int8: every token speculative int4 decoding picks is, on the exact (uncached) logits of the
    output, the argmax or within int4's error of it (< 1.0 on these models: test_kv_cache_int4.py)."""
    _, model = pair(arch)
    tokens, mask = repeating_batch()
    full_mask = torch.cat((mask, mask.new_ones(3, N_NEW)), 1)
    for kw in (dict(prompt_lookup_num_tokens=3), dict(assistant_model=model, num_assistant_tokens=3)):
        out = model.generate(tokens, N_NEW, attention_mask=mask, stop_at_eos=False, kv_cache_dtype="int4",
                             return_stats=True, **kw)  # fmt: skip
        assert out.stats.accepted > 0
        exact = model(out.output, attention_mask=full_mask)[:, 11:-1].float()
        gap = exact.amax(-1) - exact.gather(2, out.output[:, 12:, None]).squeeze(2)
        assert gap.max() < 1.0, (kw, gap)
        assert (gap == 0).float().mean() >= 0.75, kw


@pytest.mark.parametrize("max_new", [1, 2, 3, 5, 9])
def test_max_new_tokens_is_exact(max_new):
    _, model = pair("LlamaForCausalLM")
    tokens, mask = repeating_batch()
    plain = model.generate(tokens, max_new, attention_mask=mask, stop_at_eos=False)
    for kw in (dict(prompt_lookup_num_tokens=4), dict(assistant_model=model, num_assistant_tokens=4)):
        out = model.generate(tokens, max_new, attention_mask=mask, stop_at_eos=False, return_stats=True, **kw)
        assert out.output.shape == (3, 12 + max_new)
        assert torch.equal(out.output, plain)
        assert out.stats.steps == max_new


def test_stream_yields_every_token_and_stats():
    _, model = pair("LlamaForCausalLM")
    tokens, _ = repeating_batch()
    prompt = tokens[:1]
    plain = model.generate(prompt, N_NEW, stop_at_eos=False)
    stream = model.generate_stream(prompt, N_NEW, stop_at_eos=False, assistant_model=model, num_assistant_tokens=3)
    items = list(stream)
    assert len(items) == N_NEW
    assert torch.equal(torch.stack(items, 1)[0], plain[0, prompt.shape[1] :])
    assert stream.stats.accepted == stream.stats.proposed > 0
    assert stream.stats.forwards < N_NEW


def test_stream_text():
    model = lens.zoo.load("attn-only-2l")
    prompt = "import os\nimport sys\nimport os\nimport "
    plain = model.generate(prompt, 30)
    pieces = list(model.generate_stream(prompt, 30, prompt_lookup_num_tokens=5))
    assert prompt + "".join(pieces) == plain


def test_hooks_see_every_verification_forward():
    _, model = pair("MistralForCausalLM")
    tokens, _ = repeating_batch()
    prompt = tokens[:1]
    seen = []
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: seen.append(x.shape[1]))]):
        out = model.generate(prompt, N_NEW, stop_at_eos=False, prompt_lookup_num_tokens=3, return_stats=True)
    stats = out.stats
    assert len(seen) == stats.forwards
    assert seen[0] == prompt.shape[1]
    assert sum(seen[1:]) == stats.proposed + stats.forwards - 1  # the last accepted token + the proposals
    assert torch.equal(out.output, model.generate(prompt, N_NEW, stop_at_eos=False))


def test_return_cache_falls_back_to_plain_decoding():
    _, model = pair("LlamaForCausalLM")
    tokens, _ = repeating_batch()
    out = model.generate(tokens[:1], 6, stop_at_eos=False, prompt_lookup_num_tokens=3, return_cache=True,
                         names_filter="hook_embed", return_stats=True)  # fmt: skip
    assert out.stats.proposed == 0 and out.stats.forwards == 7  # prefill, 5 steps, the recorder's last token
    assert out.cache["hook_embed"].shape[1] == 12 + 6


def test_plain_stats():
    _, model = pair("LlamaForCausalLM")
    out = model.generate(torch.tensor([[5, 6, 7]]), 4, stop_at_eos=False, return_stats=True)
    assert (out.stats.proposed, out.stats.accepted, out.stats.forwards, out.stats.steps) == (0, 0, 4, 4)
    tokens, logprobs, cache = model.generate(torch.tensor([[5, 6, 7]]), 4, stop_at_eos=False, output_logprobs=True)
    assert cache is None and logprobs.shape == (1, 4)


def test_logprobs_match_plain():
    _, model = pair("GPT2LMHeadModel")
    tokens, mask = repeating_batch()
    plain = model.generate(tokens, N_NEW, attention_mask=mask, stop_at_eos=False, output_logprobs=True)
    spec = model.generate(tokens, N_NEW, attention_mask=mask, stop_at_eos=False, output_logprobs=True,
                          assistant_model=model, num_assistant_tokens=3)  # fmt: skip
    assert torch.equal(spec.output, plain.output)
    torch.testing.assert_close(spec.logprobs, plain.logprobs, atol=1e-4, rtol=0)


def test_repetition_penalty_greedy_equals_plain():
    _, model = pair("LlamaForCausalLM")
    tokens, mask = repeating_batch()
    plain = model.generate(tokens, N_NEW, attention_mask=mask, stop_at_eos=False, repetition_penalty=1.5)
    for kw in (dict(prompt_lookup_num_tokens=3), dict(assistant_model=model, num_assistant_tokens=3)):
        spec = model.generate(tokens, N_NEW, attention_mask=mask, stop_at_eos=False, repetition_penalty=1.5, **kw)
        assert torch.equal(spec, plain), kw


# -- the KV cache's rollback ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["MistralForCausalLM", "LlamaForCausalLM"])
@pytest.mark.parametrize("kv_cache_dtype", [None, "int8", "int4"])
def test_truncate_equals_never_having_run_the_tokens(arch, kv_cache_dtype):
    """Write speculative tokens, roll them back, continue: logits equal a cache that only saw the kept tokens,
    and a plain (non-ring) buffer holds exactly the kept positions' bytes (values and scales)."""
    _, model = pair(arch)  # Mistral: window 5, so the ring (5 + 3 spare slots) wraps
    g = torch.Generator().manual_seed(4)
    seq = torch.randint(3, 97, (2, 20), generator=g)
    wrong = torch.randint(3, 97, (2, 4), generator=g)
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, :3] = 0
    cache = KVCache.for_model(model, 2, 24, kv_cache_dtype=kv_cache_dtype, spare=3)
    ref = KVCache.for_model(model, 2, 24, kv_cache_dtype=kv_cache_dtype, spare=3)
    ptrs = [s.k.data_ptr() for s in cache.layers]
    real = mask.bool()
    for (lo, hi), n_wrong in zip([(0, 6), (6, 10), (10, 11), (11, 15), (15, 20)], [4, 1, 3, 2, 4]):
        ours = model(seq[:, lo:hi], attention_mask=mask[:, lo:hi], past_kv_cache=cache)
        theirs = model(seq[:, lo:hi], attention_mask=mask[:, lo:hi], past_kv_cache=ref)
        torch.testing.assert_close(ours[real[:, lo:hi]], theirs[real[:, lo:hi]], atol=1e-5, rtol=0)
        before = cache.offset
        model(wrong[:, :n_wrong], past_kv_cache=cache)  # proposals that get rejected
        cache.truncate(before)
        assert cache.offset == ref.offset == hi
    assert [s.k.data_ptr() for s in cache.layers] == ptrs  # no reallocation, no copies
    for a, b in zip(cache.layers, ref.layers):
        if not a.ring:
            for name in a.tensors():
                assert torch.equal(getattr(a, name)[:, :, :20], getattr(b, name)[:, :, :20]), name


def test_truncate_limits():
    _, model = pair("MistralForCausalLM")
    cache = KVCache.for_model(model, 1, 30, spare=2)
    assert [s.k.shape[2] for s in cache.layers] == [7, 7]  # window 5 + 2 spare slots
    model(torch.randint(3, 97, (1, 12)), past_kv_cache=cache)
    with pytest.raises(ValueError, match="can roll back at most 3 positions, not 4"):
        cache.truncate(8)
    cache.truncate(9)
    assert cache.offset == 9
    with pytest.raises(ValueError, match=r"truncate length must be an int in \[0, offset=9\], got 10"):
        cache.truncate(10)
    with pytest.raises(ValueError, match="spare must be an int >= 0"):
        KVCache.for_model(model, 1, 30, spare=-1)


# -- bad input -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def byte_model() -> lens.HookedTransformer:
    cfg = lens.TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=259, n_ctx=32)
    return lens.HookedTransformer(cfg, tokenizer=lens.Tokenizer.byte_level()).eval()


def test_bad_speculative_arguments(byte_model):
    other_vocab = lens.HookedTransformer(
        lens.TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=50, n_ctx=32)
    ).eval()
    short = lens.HookedTransformer(
        lens.TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=259, n_ctx=8),
        tokenizer=lens.Tokenizer.byte_level(),
    ).eval()
    bad = [
        (dict(prompt_lookup_num_tokens=0), ValueError, "prompt_lookup_num_tokens must be >= 1, got 0"),
        (dict(prompt_lookup_num_tokens=-2), ValueError, "prompt_lookup_num_tokens must be >= 1, got -2"),
        (dict(prompt_lookup_num_tokens=2.5), TypeError, "prompt_lookup_num_tokens must be an int"),
        (dict(max_matching_ngram_size=0, prompt_lookup_num_tokens=2), ValueError, "max_matching_ngram_size"),
        (dict(prompt_lookup_num_tokens=3, num_beams=2), ValueError, "does not support beam search; num_beams"),
        (dict(assistant_model=byte_model, num_beams=2), ValueError, "does not support beam search"),
        (dict(prompt_lookup_num_tokens=3, use_past_kv_cache=False), ValueError, "needs use_past_kv_cache=True"),
        (dict(assistant_model=byte_model, prompt_lookup_num_tokens=3), ValueError, "not both"),
        (dict(assistant_model="small"), TypeError, "assistant_model must be a lens model"),
        (dict(assistant_model=other_vocab), ValueError, "assistant_model has d_vocab=50 but the model has d_vocab=259"),
        (dict(assistant_model=short), ValueError, "assistant_model's context is 8 positions"),
        (dict(assistant_model=byte_model, num_assistant_tokens=0), ValueError, "num_assistant_tokens must be >= 1"),
        (dict(assistant_model=byte_model, num_assistant_tokens_schedule="x"), ValueError, "schedule must be one of"),
        (dict(output_trace=1), TypeError, "output_trace must be a bool"),
        (dict(trace_top_k=0), ValueError, "trace_top_k must be >= 1"),
    ]
    for kw, exc, msg in bad:
        with pytest.raises(exc, match=msg):
            byte_model.generate("Hello", 5, **kw)
    with pytest.raises(ValueError, match="does not support beam search"):
        byte_model.generate_stream("Hi", 5, prompt_lookup_num_tokens=2, num_beams=2)


def test_other_tokenizer_is_refused(byte_model, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {chr(c): i for i, c in enumerate(range(32, 32 + 259))}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token=" "))
    other = lens.HookedTransformer(byte_model.cfg, tokenizer=lens.Tokenizer(backend)).eval()
    with pytest.raises(ValueError, match="tokenizer differs from the model's"):
        byte_model.generate("Hi", 5, assistant_model=other)
