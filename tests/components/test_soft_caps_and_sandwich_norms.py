"""Gemma 2's core features, generic in the components: attention / logit soft caps and sandwich norms.

Oracles: the definitions written out on cached activations, the same weights without the feature (a cap
changes exactly what its formula says), Hugging Face's Gemma 2 (the family parity tests) and TransformerLens
(``tests/compat/test_tl_config.py``).
"""

from __future__ import annotations

import pytest
import torch

import lens
from tests.tiny import tiny_model

TOKENS = torch.tensor([[5, 9, 14, 3, 40, 7, 7, 21], [7, 7, 21, 30, 2, 11, 5, 9]])


def gemma2_like(**overrides):
    fields = dict(
        use_normalization_before_and_after=True, attn_scores_soft_cap=0.5, output_logits_soft_cap=0.3,
        window_size=3, window_layers=(0,), act_fn="gelu_pytorch_tanh",
    )  # fmt: skip
    fields.update(overrides)
    model = tiny_model("llama", **fields)
    with torch.no_grad():  # O(1) scores, so the attention cap bends them
        for block in model.blocks:
            block.attn.qkv_weight.mul_(20.0)
    return model


def same_weights(model, **changes):
    other = lens.HookedTransformer(model.cfg.replace(**changes), init=False)
    other.load_state_dict(model.state_dict())
    return other.eval()


def test_attention_scores_are_soft_capped_before_the_mask():
    model = gemma2_like()
    _, cache = model.run_with_cache(TOKENS)
    cap, attn = model.cfg.attn_scores_soft_cap, model.blocks[1].attn
    q, k = cache["rot_q", 1], cache["rot_k", 1].repeat_interleave(attn.n_rep, dim=2)
    raw = torch.einsum("bqhd,bkhd->bhqk", q, k) * attn.scale
    capped = cap * torch.tanh(raw / cap)
    causal = torch.ones(8, 8, dtype=torch.bool).tril()
    scores = cache["attn_scores", 1]
    torch.testing.assert_close(scores[..., causal], capped[..., causal], atol=1e-6, rtol=1e-5)
    assert scores.max() <= cap and torch.isinf(scores[..., ~causal]).all()
    torch.testing.assert_close(cache["pattern", 1], capped.masked_fill(~causal, float("-inf")).softmax(-1))
    window = cache["pattern", 0]  # the local layer: keys within 3 positions only
    far = torch.ones(8, 8, dtype=torch.bool).tril(-3)
    assert (window[..., far] == 0).all()


def test_capped_attention_runs_the_same_with_and_without_watchers():
    model = gemma2_like()
    with torch.no_grad():
        plain = model(TOKENS)  # nobody watches the pattern: the explicit path is still taken for the cap
        _, cache = model.run_with_cache(TOKENS)
        uncapped = same_weights(model, attn_scores_soft_cap=None)(TOKENS)
    torch.testing.assert_close(plain, model(TOKENS), atol=0, rtol=0)
    assert not torch.allclose(plain, uncapped, atol=1e-3)


def test_logits_are_the_soft_cap_of_the_uncapped_logits():
    model = gemma2_like()
    with torch.no_grad():
        logits = model(TOKENS)
        raw = same_weights(model, output_logits_soft_cap=None)(TOKENS)
    cap = model.cfg.output_logits_soft_cap
    torch.testing.assert_close(logits, cap * torch.tanh(raw / cap), atol=1e-6, rtol=1e-5)
    assert logits.abs().max() < cap
    step = model.decode_step(TOKENS, None)  # decoding goes through the same unembedding
    torch.testing.assert_close(step, logits[:, -1], atol=1e-6, rtol=0)


def test_sandwich_norms_normalise_each_sublayer_output():
    model = gemma2_like()
    _, cache = model.run_with_cache(TOKENS)
    block = model.blocks[1]
    z = cache["z", 1]
    attn_raw = torch.einsum("bphd,hdm->bpm", z, model.W_O[1]) + model.b_O[1]
    torch.testing.assert_close(cache["attn_out", 1], block.ln1_post(attn_raw), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache["attn_out", 1], cache["blocks.1.ln1_post.hook_normalized"], atol=0, rtol=0)
    torch.testing.assert_close(cache["mlp_out", 1], cache["blocks.1.ln2_post.hook_normalized"], atol=0, rtol=0)
    torch.testing.assert_close(cache["resid_post", 1], cache["resid_mid", 1] + cache["mlp_out", 1])
    plain = tiny_model("llama")
    assert plain.blocks[0].ln1_post is None and "blocks.0.ln1_post.hook_normalized" not in plain.hook_dict


@pytest.mark.parametrize("name", ["attn_scores_soft_cap", "output_logits_soft_cap"])
@pytest.mark.parametrize("bad", [0, -1.0, True, "50"])
def test_soft_caps_must_be_positive_numbers(name, bad):
    with pytest.raises(ValueError, match=f"{name}="):
        tiny_model("llama", **{name: bad})


def test_local_layers_rotate_with_their_own_base():
    from lens.components.rotary import Rotary, apply_rotary

    model = tiny_model("llama", window_size=3, window_layers=(0,), rotary_base=1e6, rotary_base_local=1e4,
                       rope_scaling={"rope_type": "linear", "factor": 8.0})  # fmt: skip
    _, cache = model.run_with_cache(TOKENS)
    positions = torch.arange(TOKENS.shape[1]).expand_as(TOKENS)
    local = Rotary(model.cfg.replace(rotary_base=1e4, rope_scaling=None)).cos_sin(positions, torch.float32)
    glob = Rotary(model.cfg).cos_sin(positions, torch.float32)
    for layer, (cos, sin) in ((0, local), (1, glob)):
        torch.testing.assert_close(cache["rot_q", layer], apply_rotary(cache["q", layer], cos, sin), atol=1e-6, rtol=0)
    assert not torch.allclose(local[0], glob[0])
    with pytest.raises(ValueError, match="rotary_base_local"):
        tiny_model("gpt2", rotary_base_local=1e4)
