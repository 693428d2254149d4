"""Stacked weight properties (lens.weights): TransformerLens shapes, GQA expansion, QK/OV circuits."""

import pytest
import torch

from lens import FactoredMatrix
from tests.conftest import VOCAB, tiny_model

FAMILIES = ["gpt2", "llama", "neox", "attn_only"]


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return tiny_model(request.param)


def test_shapes(model):
    c = model.cfg
    L, H, KV, D, Dh = c.n_layers, c.n_heads, c.n_key_value_heads, c.d_model, c.d_head
    assert model.W_Q.shape == (L, H, D, Dh)
    assert model.W_K.shape == model.W_V.shape == (L, H, D, Dh)
    assert model._W_K.shape == model._W_V.shape == (L, KV, D, Dh)
    assert model.W_O.shape == (L, H, Dh, D)
    assert model.b_Q.shape == model.b_K.shape == model.b_V.shape == (L, H, Dh)
    assert model._b_K.shape == (L, KV, Dh)
    assert model.b_O.shape == (L, D)
    assert model.QK.shape == model.OV.shape == (L, H, D, D)
    assert model.W_E.shape == (VOCAB, D) and model.W_U.shape == (D, VOCAB)
    if c.attn_only:
        with pytest.raises(ValueError, match="attn_only"):
            _ = model.W_in
    else:
        assert model.W_in.shape == (L, D, c.d_mlp) and model.W_out.shape == (L, c.d_mlp, D)
        assert model.b_in.shape == (L, c.d_mlp) and model.b_out.shape == (L, D)
        if c.gated_mlp:
            assert model.W_gate.shape == (L, D, c.d_mlp)
        else:
            with pytest.raises(ValueError, match="not gated"):
                _ = model.W_gate
    assert len(model.all_head_labels()) == L * H


def test_gqa_expansion_matches_attention_grouping():
    model = tiny_model("llama")
    rep = model.cfg.n_heads // model.cfg.n_key_value_heads
    assert rep == 2
    for h in range(model.cfg.n_heads):
        torch.testing.assert_close(model.W_K[:, h], model._W_K[:, h // rep])
        torch.testing.assert_close(model.W_V[:, h], model._W_V[:, h // rep])
    # Missing biases read as zeros.
    assert not model.b_Q.any() and not model.b_O.any() and not model.b_out.any()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_weights_reproduce_activations(family):
    """q/k/v from the stacked weights equal the hooks; per-head z @ W_O (+ b_O) equals attn_out."""
    model = tiny_model(family)
    tokens = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(1))
    _, cache = model.run_with_cache(tokens)
    for layer in range(model.cfg.n_layers):
        x = cache["normalized", layer, "ln1"]
        q = torch.einsum("bpd,hdk->bphk", x, model.W_Q[layer]) + model.b_Q[layer]
        k = torch.einsum("bpd,hdk->bphk", x, model._W_K[layer]) + model._b_K[layer]
        torch.testing.assert_close(q, cache["q", layer], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(k, cache["k", layer], atol=1e-5, rtol=1e-5)
        out = torch.einsum("bphk,hkd->bpd", cache["z", layer], model.W_O[layer]) + model.b_O[layer]
        torch.testing.assert_close(out, cache["attn_out", layer], atol=1e-5, rtol=1e-5)
    if family == "gpt2":  # no rotary: QK gives the attention scores directly
        x = cache["normalized", 1, "ln1"][0]  # [pos, d_model]
        q = x @ model.W_Q[1] + model.b_Q[1][:, None]  # [head, pos, d_head]
        k = x @ model.W_K[1] + model.b_K[1][:, None]
        scores = q @ k.transpose(-1, -2) / model.cfg.d_head**0.5
        mask = torch.ones(6, 6, dtype=torch.bool).tril()
        torch.testing.assert_close(scores[:, mask], cache["attn_scores", 1][0][:, mask], atol=1e-4, rtol=1e-4)
        # The bias-free bilinear part of the scores is x QK x^T.
        q0, k0 = x @ model.W_Q[1], x @ model.W_K[1]
        torch.testing.assert_close(x @ model.QK[1].AB @ x.T, q0 @ k0.transpose(-1, -2), atol=1e-5, rtol=1e-4)


def test_qk_ov_factored_equal_materialised(model):
    qk, ov = model.QK, model.OV
    assert isinstance(qk, FactoredMatrix) and isinstance(ov, FactoredMatrix)
    torch.testing.assert_close(qk.AB, torch.einsum("lhdk,lhek->lhde", model.W_Q, model.W_K))
    torch.testing.assert_close(ov.AB, torch.einsum("lhdk,lhke->lhde", model.W_V, model.W_O))
    v = torch.randn(model.cfg.d_model)
    torch.testing.assert_close(ov @ v, ov.AB @ v, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(qk[1, 2].AB, qk.AB[1, 2])
    assert ov.mdim == model.cfg.d_head


def test_qk_uses_zero_biases_when_absent():
    model = tiny_model("gpt2", qkv_bias=False, attn_out_bias=False)
    assert not model.b_K.any() and not model.b_V.any() and not model.b_O.any()


def test_accumulated_bias():
    model = tiny_model("gpt2")
    n = model.cfg.n_layers
    total = sum(model.blocks[i].attn.b_O + model.blocks[i].mlp.b_out for i in range(n))
    torch.testing.assert_close(model.accumulated_bias(n), total)
    torch.testing.assert_close(model.accumulated_bias(0), torch.zeros(model.cfg.d_model))
    torch.testing.assert_close(model.accumulated_bias(1, mlp_input=True), total - model.blocks[1].mlp.b_out)
    torch.testing.assert_close(
        model.accumulated_bias(n, include_mlp_biases=False), sum(model.blocks[i].attn.b_O for i in range(n))
    )
    with pytest.raises(ValueError, match="layer"):
        model.accumulated_bias(n + 1)
    with pytest.raises(ValueError, match="mlp_input"):
        model.accumulated_bias(n, mlp_input=True)


def test_tokens_to_residual_directions():
    model = tiny_model("gpt2")
    dirs = model.tokens_to_residual_directions(torch.tensor([[3, 5]]))
    assert dirs.shape == (1, 2, model.cfg.d_model)
    torch.testing.assert_close(dirs[0, 1], model.W_U[:, 5])
    with pytest.raises(ValueError, match="d_vocab"):
        model.tokens_to_residual_directions(VOCAB)
    with pytest.raises(TypeError):
        model.tokens_to_residual_directions(torch.tensor([1.0]))
