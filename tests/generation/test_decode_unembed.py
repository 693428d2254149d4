"""The input-major decode copy of a tied unembedding: exact values, reuse, never stale, same tokens as HF."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

from lens.generation import decode_unembed
from lens.generation.decode_unembed import MIN_DECODE_ROWS
from tests.generation._hf import pair
from tests.generation.test_generate_hf import hf_generate, padded_batch

TIED = ["GPT2LMHeadModel", "LlamaForCausalLM", "Qwen2ForCausalLM"]
LONG = MIN_DECODE_ROWS // 3 + 4  # new tokens for the 3-row batch: enough rows to use the copy


def tied(arch: str = "GPT2LMHeadModel"):
    hf, model = pair(arch, tie_word_embeddings=True)
    assert model.unembed.weight is model.embed.weight
    return hf, model


def test_copy_is_the_weight_input_major_and_reused():
    _, model = tied()
    w = model.unembed.weight
    with torch.inference_mode():
        t = decode_unembed.weight_for_decode(model, MIN_DECODE_ROWS)
        assert t.is_contiguous() and torch.equal(t, w.t())
        assert t.data_ptr() != w.data_ptr()  # a copy, not the tied matrix
        assert decode_unembed.weight_for_decode(model, MIN_DECODE_ROWS) is t  # unchanged weight: reused
    model.release_decode_copy()
    assert not decode_unembed.holds_copy(model)


def test_no_copy_when_short_disabled_or_already_input_major():
    _, model = tied()
    w = model.unembed.weight
    short = decode_unembed.weight_for_decode(model, MIN_DECODE_ROWS - 1)
    assert short.data_ptr() == w.data_ptr() and not decode_unembed.holds_copy(model)
    model.decode_unembed_copy = False
    assert decode_unembed.weight_for_decode(model, 10**6).data_ptr() == w.data_ptr()
    _, untied = pair("GPT2LMHeadModel")  # an untied unembedding is stored input-major already
    u = untied.unembed.weight
    assert decode_unembed.weight_for_decode(untied, 10**6).data_ptr() == u.data_ptr()
    assert not decode_unembed.holds_copy(untied)


@pytest.mark.parametrize(
    "edit",
    [
        "data_setitem",  # autograd does not count .data writes: only the fingerprint can see them
        "data_row_swap",
        "data_small",
        "data_column_swap",
        "no_grad_inplace",
        "new_parameter",
        "to_float64",
    ],
)
def test_any_edit_rebuilds_the_copy(edit):
    _, model = tied()
    with torch.inference_mode():
        first = decode_unembed.weight_for_decode(model, MIN_DECODE_ROWS).clone()
    w = model.unembed.weight
    if edit == "data_setitem":
        w.data[5, 3] = 7.0
    elif edit == "data_row_swap":
        w.data[[4, 9]] = w.data[[9, 4]].clone()
    elif edit == "data_small":  # one element, by 1e-4 of its row's scale
        w.data[11, 0] += 1e-4 * w.data[11].abs().max()
    elif edit == "data_column_swap":  # a permutation inside every row keeps each row's plain sum
        w.data[:, [0, 1]] = w.data[:, [1, 0]].clone()
    elif edit == "no_grad_inplace":
        with torch.no_grad():
            w.mul_(-1)
    elif edit == "new_parameter":
        model.unembed.weight = nn.Parameter(torch.randn_like(w))
    elif edit == "to_float64":
        model.to(torch.float64)
    w = model.unembed.weight
    with torch.inference_mode():
        t = decode_unembed.weight_for_decode(model, MIN_DECODE_ROWS)
    assert torch.equal(t, w.t()) and t.dtype == w.dtype
    assert not (t.dtype == first.dtype and torch.equal(t, first))


@pytest.mark.parametrize("arch", TIED)
def test_long_greedy_generate_with_the_copy_matches_hf(arch):
    hf, model = tied(arch)
    tokens, mask = padded_batch()
    ours = model.generate(tokens, LONG, attention_mask=mask, stop_at_eos=False)
    assert decode_unembed.holds_copy(model)  # the call was long enough to read the copy
    assert torch.equal(ours, hf_generate(hf, tokens, mask, max_new_tokens=LONG, eos_token_id=None, pad_token_id=0))


def test_generate_after_a_data_edit_uses_the_edited_weights():
    """Edit the tied matrix behind autograd's back between calls: the fast path must see it."""
    _, model = tied()
    tokens, mask = padded_batch()
    model.generate(tokens, LONG, attention_mask=mask, stop_at_eos=False)  # builds the copy
    model.embed.weight.data[:, :4] *= -3.0
    fast = model.generate(tokens, LONG, attention_mask=mask, stop_at_eos=False, output_logprobs=True)
    with model.hooks(fwd_hooks=[("hook_embed", lambda x, hook: None)]):  # the module path: no copy
        slow = model.generate(tokens, LONG, attention_mask=mask, stop_at_eos=False, output_logprobs=True)
    assert torch.equal(fast.output, slow.output)
    torch.testing.assert_close(fast.logprobs, slow.logprobs, atol=1e-5, rtol=0)


def test_copy_dies_with_the_model():
    _, model = tied()
    with torch.inference_mode():
        decode_unembed.weight_for_decode(model, MIN_DECODE_ROWS)
    copy = weakref.ref(decode_unembed._COPIES[model])
    del model
    gc.collect()
    assert copy() is None
