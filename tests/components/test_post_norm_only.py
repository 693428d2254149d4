"""``use_normalization_after_only``: post-norm-only blocks (OLMo-2), ``h = x + ln1_post(attn(x))``,
``out = h + ln2_post(mlp(h))``, with no norm before attention or the MLP.

Oracles: the block written out on cached activations, Hugging Face's OLMo-2 (the family parity tests), and
the processing steps' own contracts (log-probs kept; a step that cannot keep them refused).
"""

from __future__ import annotations

import pytest
import torch

from lens.processing import ProcessingFlags
from tests.tiny import tiny_model

TOKENS = torch.tensor([[5, 9, 14, 3, 40, 7], [7, 7, 21, 30, 2, 11]])


def rms(x, w, eps):
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() * w


@pytest.fixture
def model():
    return tiny_model("llama", use_normalization_after_only=True)


def test_blocks_have_only_the_post_norms(model):
    for block in model.blocks:
        assert block.ln1 is None and block.ln2 is None
        assert block.ln1_post is not None and block.ln2_post is not None
    names = set(model.hook_dict)
    assert "blocks.0.ln1_post.hook_normalized" in names and "blocks.1.ln2_post.hook_scale" in names
    assert not any(".ln1.hook" in n or ".ln2.hook" in n for n in names)
    assert "ln_final.hook_normalized" in names  # the final norm stays
    assert not any(k.startswith(("blocks.0.ln1.", "blocks.0.ln2.")) for k in model.state_dict())


def test_block_is_x_plus_post_norm_of_each_sublayer(model):
    _, cache = model.run_with_cache(TOKENS)
    eps = model.cfg.eps
    for i, block in enumerate(model.blocks):
        resid_pre, resid_mid = cache["resid_pre", i], cache["resid_mid", i]
        # attention reads the residual stream itself
        q = torch.einsum("bpd,hdk->bphk", resid_pre, block.attn.W_Q)
        torch.testing.assert_close(cache["q", i], q, atol=1e-5, rtol=1e-5)
        attn_raw = torch.einsum("bphk,hkd->bpd", cache["z", i], block.attn.W_O)
        torch.testing.assert_close(cache["attn_out", i], rms(attn_raw, block.ln1_post.w, eps), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache[f"blocks.{i}.ln1_post.hook_normalized"], cache["attn_out", i])
        torch.testing.assert_close(resid_mid, resid_pre + cache["attn_out", i])
        # so does the MLP
        torch.testing.assert_close(
            cache[f"blocks.{i}.mlp.hook_pre_linear"], resid_mid @ block.mlp.W_in, atol=1e-5, rtol=1e-5
        )
        mlp_raw = cache[f"blocks.{i}.mlp.hook_post"] @ block.mlp.W_out
        torch.testing.assert_close(cache["mlp_out", i], rms(mlp_raw, block.ln2_post.w, eps), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache["resid_post", i], resid_mid + cache["mlp_out", i])


def test_flags_that_reach_the_norm_inputs_still_work(model):
    logits = model(TOKENS)
    model.set_use_split_qkv_input(True)
    model.set_use_attn_in(True)
    model.set_use_hook_mlp_in(True)
    torch.testing.assert_close(model(TOKENS), logits, atol=1e-5, rtol=0)


def test_applying_the_norm_to_a_stack_is_the_identity_before_a_block(model):
    _, cache = model.run_with_cache(TOKENS)
    stack = cache.decompose_resid(layer=1)
    torch.testing.assert_close(cache.apply_ln_to_stack(stack, layer=1), stack)  # attention reads it as is
    assert not torch.allclose(cache.apply_ln_to_stack(cache.decompose_resid(), layer=None), cache.decompose_resid())


@pytest.mark.parametrize("normalization", ["RMS", "LN"])
def test_fold_ln_folds_only_ln_final_and_keeps_log_probs(normalization):
    model = tiny_model("llama", use_normalization_after_only=True, normalization=normalization)
    post = [model.blocks[0].ln1_post.w.clone(), model.blocks[1].ln2_post.w.clone()]
    expected = model(TOKENS).log_softmax(-1)
    model.process_weights(fold_ln=True, center_unembed=True, fold_value_biases=True)
    torch.testing.assert_close(model(TOKENS).log_softmax(-1), expected, atol=1e-5, rtol=0)
    assert torch.all(model.ln_final.w == 1)
    # the post norms write to the residual stream (no linear layer reads them): left as they were
    torch.testing.assert_close(model.blocks[0].ln1_post.w, post[0], atol=0, rtol=0)
    torch.testing.assert_close(model.blocks[1].ln2_post.w, post[1], atol=0, rtol=0)


def test_centering_writing_weights_is_refused_even_with_layernorm():
    """No norm reads the residual stream before attention / the MLP, so its mean is not discarded."""
    model = tiny_model("llama", use_normalization_after_only=True, normalization="LN")
    with pytest.raises(ValueError, match="use_normalization_after_only=True"):
        ProcessingFlags(center_writing_weights=True).check(model.cfg)
    expected = model(TOKENS).log_softmax(-1)
    with pytest.warns(UserWarning, match="center_writing_weights is skipped"):
        model.process_weights_()  # TransformerLens's defaults skip it with a warning, as without LayerNorm
    torch.testing.assert_close(model(TOKENS).log_softmax(-1), expected, atol=1e-5, rtol=0)
    assert "center_writing_weights" not in model.cfg.extra["weight_processing"]


def test_sandwich_norms_keep_the_pre_norms():
    block = tiny_model("llama", use_normalization_before_and_after=True).blocks[0]
    assert None not in (block.ln1, block.ln2, block.ln1_post, block.ln2_post)
    block = tiny_model("llama").blocks[0]
    assert block.ln1 is not None and block.ln1_post is None and block.ln2_post is None


def test_config_is_validated():
    with pytest.raises(ValueError, match="excludes use_normalization_before_and_after"):
        tiny_model("llama", use_normalization_after_only=True, use_normalization_before_and_after=True)
    with pytest.raises(ValueError, match="needs a normalization"):
        tiny_model("llama", use_normalization_after_only=True, normalization=None)
