"""Bad generate arguments fail early with clear messages, before any model compute."""

from __future__ import annotations

import re

import pytest
import torch

import lens
from lens.generation import check_context


@pytest.fixture(scope="module")
def model() -> lens.HookedTransformer:
    cfg = lens.TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=259, n_ctx=32)
    return lens.HookedTransformer(cfg, tokenizer=lens.Tokenizer.byte_level()).eval()


@pytest.fixture(scope="module")
def bare() -> lens.HookedTransformer:
    cfg = lens.TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=50, n_ctx=32)
    return lens.HookedTransformer(cfg).eval()


BAD = [
    (dict(do_sample=True, temperature=0.0), ValueError, "temperature must be > 0"),
    (dict(do_sample=True, temperature=-1.0), ValueError, "temperature must be > 0"),
    (dict(top_p=0.0), ValueError, r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), ValueError, r"top_p must be in \(0, 1\]"),
    (dict(min_p=-0.1), ValueError, r"min_p must be in \[0, 1\]"),
    (dict(min_p=1.1), ValueError, r"min_p must be in \[0, 1\]"),
    (dict(top_k=-1), ValueError, "top_k must be >= 0"),
    (dict(top_k=2.5), TypeError, "top_k must be an int"),
    (dict(repetition_penalty=0.0), ValueError, "repetition_penalty must be > 0"),
    (dict(num_beams=0), ValueError, "num_beams must be >= 1"),
    (dict(num_beams=2, do_sample=True), ValueError, "beam sampling"),
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens must be >= 0"),
    (dict(max_new_tokens=2.0), TypeError, "max_new_tokens must be an int"),
    (dict(return_type="logits"), ValueError, "return_type must be one of"),
    (dict(padding_side="middle"), ValueError, "padding_side"),
    (dict(kv_cache_dtype="fp8"), ValueError, "kv_cache_dtype must be one of"),
    (dict(kv_cache_dtype="int8", use_past_kv_cache=False), ValueError, "needs use_past_kv_cache=True"),
    (dict(eos_token_id=300), ValueError, "eos_token_id 300 is outside the vocabulary"),
    (dict(eos_token_id=[]), TypeError, "eos_token_id must be an int or a non-empty list"),
    (dict(early_stopping="sometimes"), ValueError, "early_stopping"),
    (dict(names_filter=["hook_embed"]), ValueError, "set return_cache=True"),
    (dict(return_cache=True, names_filter=["hook_nope"]), ValueError, "unknown hook name"),
    (dict(return_cache=True, num_beams=2), ValueError, "not supported with beam search"),
    (dict(seed=-3), ValueError, "seed must be >= 0"),
]


@pytest.mark.parametrize("kw,exc,msg", BAD, ids=[str(kw) for kw, _, _ in BAD])
def test_bad_arguments(model, kw, exc, msg):
    kw = dict(kw)
    with pytest.raises(exc, match=msg):
        model.generate("Hi", kw.pop("max_new_tokens", 3), **kw)


@pytest.mark.parametrize(
    "input,msg",
    [
        ("", "the prompt is empty"),
        ([], "the prompt list is empty"),
        (["ab", ""], r"prompt\(s\) \[1\] are empty"),
        (torch.zeros(1, 0, dtype=torch.long), "the prompt is empty"),
        (torch.tensor([[1, 300]]), "outside the vocabulary"),
        (torch.tensor([[0.5]]), "integer tensor"),
        (3, "input must be a string"),
    ],
)
def test_bad_prompts(model, input, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        model.generate(input, 3, prepend_bos=False)


def test_right_padded_token_mask_is_rejected(model):
    with pytest.raises(ValueError, match="needs left padding"):
        model.generate(torch.tensor([[1, 2, 3]]), 2, attention_mask=torch.tensor([[1, 1, 0]]))


def test_stop_at_eos_without_an_eos(bare):
    with pytest.raises(ValueError, match="no EOS token is known.*eos_token_id=.*stop_at_eos=False"):
        bare.generate(torch.tensor([[1, 2]]), 3)
    assert bare.generate(torch.tensor([[1, 2]]), 3, stop_at_eos=False).shape == (1, 5)
    assert bare.generate(torch.tensor([[1, 2]]), 3, eos_token_id=4).shape[1] <= 5
    with pytest.raises(ValueError, match="needs a tokenizer"):
        bare.generate(torch.tensor([[1, 2]]), 3, stop_at_eos=False, return_type="str")


def test_context_limit_message_with_numbers():
    cfg = lens.TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=50, n_ctx=2048, n_ctx_trained=32768)
    expected = (
        "the prompt has 100 tokens and max_new_tokens=2000 needs 2100 positions, but the model's context is 2048 "
        "(at most 1948 new tokens fit); shorten the prompt, lower max_new_tokens, or load with "
        "context_size_override (trained maximum 32768)"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        check_context(cfg, 100, 2000)
    plain = cfg.replace(n_ctx_trained=2048)
    with pytest.raises(
        ValueError, match=r"\(at most 1948 new tokens fit\); shorten the prompt or lower max_new_tokens$"
    ):
        check_context(plain, 100, 2000)
    assert check_context(cfg, 100, None) == 1948
    with pytest.raises(ValueError, match="no new token fits"):
        check_context(cfg, 2048, None)


def test_context_limit_is_checked_before_any_compute(model):
    calls = []
    with model.hooks(fwd_hooks=[("hook_embed", lambda x, hook: calls.append(1))]):
        with pytest.raises(ValueError, match="the prompt has 3 tokens and max_new_tokens=30 needs 33 positions"):
            model.generate("Hi", 30)
    assert calls == []
