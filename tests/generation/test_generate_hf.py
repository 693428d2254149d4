"""generate against transformers' generate on the same random weights: greedy, sampling, beams."""

from __future__ import annotations

import pytest
import torch

from tests.generation._hf import archs, pair

N_NEW = 10


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompts of lengths 6, 3 and 5, left-padded with id 0."""
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(3, 97, (3, 6), generator=g)
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :1] = 0
    return tokens.masked_fill(mask == 0, 0), mask


def hf_generate(hf, tokens, mask=None, **kw):
    kw.setdefault("do_sample", False)
    kw.setdefault("max_new_tokens", N_NEW)
    with torch.no_grad():
        return hf.generate(tokens, attention_mask=torch.ones_like(tokens) if mask is None else mask, **kw)


def pick_eos(model, tokens, mask) -> int:
    """A token that greedy decoding emits mid-way in row 0, so EOS stopping is exercised."""
    out = model.generate(tokens, N_NEW, attention_mask=mask, stop_at_eos=False)
    return int(out[0, tokens.shape[1] + 3])


@pytest.mark.parametrize("arch", archs())
def test_greedy_matches_hf_with_left_padding_and_rows_alone(arch):
    hf, model = pair(arch)
    tokens, mask = padded_batch()
    eos = pick_eos(model, tokens, mask)
    ours = model.generate(tokens, N_NEW, attention_mask=mask, eos_token_id=eos)
    ref = hf_generate(hf, tokens, mask, eos_token_id=eos, pad_token_id=eos)
    assert torch.equal(ours, ref)
    assert (ours[0, 6:] == eos).any()  # row 0 stopped early and was filled
    for row in range(3):
        alone = tokens[row, mask[row].bool()]
        single = model.generate(alone, N_NEW, eos_token_id=eos)
        n = single.shape[0] - alone.shape[0]
        assert torch.equal(single[alone.shape[0] :], ours[row, 6 : 6 + n])
        assert (ours[row, 6 + n :] == eos).all()


@pytest.mark.parametrize("arch", ["GPT2LMHeadModel", "LlamaForCausalLM", "MistralForCausalLM"])
def test_greedy_without_cache_matches_hf(arch):
    hf, model = pair(arch)
    tokens, mask = padded_batch()
    ours = model.generate(tokens, N_NEW, attention_mask=mask, stop_at_eos=False, use_past_kv_cache=False)
    assert torch.equal(ours, hf_generate(hf, tokens, mask, eos_token_id=None, pad_token_id=0))


SAMPLERS = [
    dict(top_k=0),
    dict(temperature=0.7, top_k=20),
    dict(top_k=0, top_p=0.8),
    dict(top_k=0, min_p=0.1, temperature=1.3),
    dict(top_k=10, top_p=0.9, repetition_penalty=1.3, temperature=0.8),
]


CASES = [("LlamaForCausalLM", kw) for kw in SAMPLERS] + [
    ("GPT2LMHeadModel", SAMPLERS[-1]),
    ("MistralForCausalLM", SAMPLERS[1]),
]


@pytest.mark.parametrize(
    "arch,kw", CASES, ids=[f"{a}-" + "-".join(f"{k}={v}" for k, v in kw.items()) for a, kw in CASES]
)
def test_seeded_sampling_matches_hf_token_for_token(arch, kw):
    hf, model = pair(arch)
    tokens = torch.randint(3, 97, (2, 5), generator=torch.Generator().manual_seed(11))
    ours = model.generate(tokens, N_NEW, do_sample=True, seed=123, stop_at_eos=False, **kw)
    torch.manual_seed(123)
    ref = hf_generate(hf, tokens, do_sample=True, eos_token_id=None, pad_token_id=0, **kw)
    assert torch.equal(ours, ref)
    again = model.generate(tokens, N_NEW, do_sample=True, seed=123, stop_at_eos=False, **kw)
    assert torch.equal(ours, again)


def test_sampling_seed_is_private_and_changes_samples():
    _, model = pair("LlamaForCausalLM")
    tokens = torch.randint(3, 97, (4, 5), generator=torch.Generator().manual_seed(11))
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = model.generate(tokens, N_NEW, do_sample=True, top_k=0, seed=1, stop_at_eos=False)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    b = model.generate(tokens, N_NEW, do_sample=True, top_k=0, seed=2, stop_at_eos=False)
    assert not torch.equal(a, b)


def test_greedy_repetition_penalty_matches_hf():
    hf, model = pair("GPT2LMHeadModel")
    tokens = torch.randint(3, 97, (2, 5), generator=torch.Generator().manual_seed(5))
    ours = model.generate(tokens, N_NEW, repetition_penalty=1.8, stop_at_eos=False)
    assert torch.equal(ours, hf_generate(hf, tokens, repetition_penalty=1.8, eos_token_id=None, pad_token_id=0))


@pytest.mark.parametrize("arch", ["GPT2LMHeadModel", "LlamaForCausalLM", "MistralForCausalLM"])
def test_beam_search_matches_hf(arch, num_beams=3):
    hf, model = pair(arch)
    tokens, mask = padded_batch()
    eos = pick_eos(model, tokens, mask)
    ours = model.generate(tokens, N_NEW, attention_mask=mask, num_beams=num_beams, eos_token_id=eos)
    ref = hf_generate(hf, tokens, mask, num_beams=num_beams, eos_token_id=eos, pad_token_id=eos)
    assert torch.equal(ours, ref)
    no_eos = model.generate(tokens, N_NEW, attention_mask=mask, num_beams=num_beams, stop_at_eos=False)
    assert torch.equal(no_eos, hf_generate(hf, tokens, mask, num_beams=num_beams, eos_token_id=None, pad_token_id=0))


def test_beam_search_options_match_hf():
    hf, model = pair("LlamaForCausalLM")
    tokens, mask = padded_batch()
    eos = pick_eos(model, tokens, mask)
    for kw in (dict(length_penalty=0.5), dict(early_stopping=True), dict(early_stopping="never", length_penalty=2.0)):
        ours = model.generate(tokens, N_NEW, attention_mask=mask, num_beams=3, eos_token_id=eos, **kw)
        ref = hf_generate(hf, tokens, mask, num_beams=3, eos_token_id=eos, pad_token_id=eos, **kw)
        assert torch.equal(ours, ref), kw
    uncached = model.generate(
        tokens, N_NEW, attention_mask=mask, num_beams=3, eos_token_id=eos, use_past_kv_cache=False
    )
    cached = model.generate(tokens, N_NEW, attention_mask=mask, num_beams=3, eos_token_id=eos)
    assert torch.equal(uncached, cached)
    cached[0, 0] = 1  # an ordinary tensor (not an inference-mode one) comes back
