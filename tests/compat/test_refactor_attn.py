"""``refactor_factored_attn_matrices`` (TransformerLens's processing flag): same outputs, same QK/OV products,
balanced factors; refused where it cannot hold (rotary, grouped-query attention).

Oracles: the model's own logits and products before the step (always run), and TransformerLens's refactored
weights on identical weights (optional; skipped without ``transformer_lens``).
"""

from __future__ import annotations

import copy

import pytest
import torch

import lens
from lens.processing import ProcessingFlags, process_weights
from tests.tiny import saved, tiny_model


def close(a, b, atol=1e-4):
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-4)


def tokens(vocab, batch=2, pos=10, seed=3):
    return torch.randint(0, vocab, (batch, pos), generator=torch.Generator().manual_seed(seed))


def biased_gpt2(**overrides):
    """A tiny GPT-2-shaped lens model whose q/k/v/o biases are all non-zero."""
    model = tiny_model("gpt2", **overrides)
    with torch.no_grad():
        g = torch.Generator().manual_seed(7)
        for block in model.blocks:
            block.attn.qkv_bias.copy_(0.3 * torch.randn(block.attn.qkv_bias.shape, generator=g))
            block.attn.o_bias.copy_(0.3 * torch.randn(block.attn.o_bias.shape, generator=g))
    return model


@pytest.mark.parametrize("fold_ln", [False, True])
@pytest.mark.parametrize("overrides", [{}, {"qkv_bias": False, "attn_out_bias": False}, {"attn_only": True}])
def test_logits_and_products_unchanged(fold_ln, overrides):
    model = tiny_model("gpt2", **overrides) if overrides else biased_gpt2()
    toks = tokens(model.cfg.d_vocab)
    before_logits = model(toks)
    QK, OV = model.QK.AB, model.OV.AB
    b_V = model.b_V
    b_O_eff = model.b_O + torch.einsum("lhd,lhdm->lm", b_V, model.W_O)  # what the value biases add
    refactored = copy.deepcopy(model)
    refactored.process_weights(fold_ln=fold_ln, refactor_factored_attn_matrices=True)
    close(refactored(toks), before_logits, atol=2e-4)
    if not fold_ln:  # fold_ln rewrites W_Q/W_K/W_V itself; the products are pinned on the unfolded model
        close(refactored.QK.AB, QK)
        close(refactored.OV.AB, OV)
        close(refactored.b_O, b_O_eff)
    assert torch.count_nonzero(refactored.b_V) == 0
    # Balanced: each W_O is orthonormal (rows), W_V's columns are orthogonal, W_Q and W_K columns have equal norms.
    d_head = model.cfg.d_head
    eye = torch.eye(d_head).expand(*refactored.W_O.shape[:2], d_head, d_head)
    close(refactored.W_O @ refactored.W_O.mT, eye)
    gram_v = refactored.W_V.mT @ refactored.W_V
    close(gram_v, torch.diag_embed(torch.diagonal(gram_v, dim1=-2, dim2=-1)))
    q_eff = torch.cat([refactored.W_Q, refactored.b_Q[:, :, None]], dim=2)
    k_eff = torch.cat([refactored.W_K, refactored.b_K[:, :, None]], dim=2)
    close(q_eff.mT @ q_eff, k_eff.mT @ k_eff)
    assert "refactor_factored_attn_matrices" in refactored.cfg.extra["weight_processing"]


def test_bilinear_form_with_biases_kept():
    model = biased_gpt2()
    x, y = torch.randn(5, model.cfg.d_model), torch.randn(7, model.cfg.d_model)

    def scores(m):
        q = torch.einsum("pm,lhmd->lhpd", x, m.W_Q) + m.b_Q[:, :, None]
        k = torch.einsum("pm,lhmd->lhpd", y, m.W_K) + m.b_K[:, :, None]
        return q @ k.mT

    before = scores(model)
    close(scores(model.process_weights(refactor_factored_attn_matrices=True)), before)


def test_from_pretrained_flag():
    directory, hf = saved("gpt2")
    toks = tokens(hf.config.vocab_size)
    with torch.no_grad():
        want = torch.log_softmax(hf(toks).logits, -1)
    model = lens.HookedTransformer.from_pretrained(directory, fold_ln=True, refactor_factored_attn_matrices=True)
    close(torch.log_softmax(model(toks), -1), want, atol=2e-4)
    close(model.W_O @ model.W_O.mT, torch.eye(model.cfg.d_head).expand(*model.W_O.shape[:2], -1, -1))
    assert ProcessingFlags(refactor_factored_attn_matrices=True).requested == ("refactor_factored_attn_matrices",)


@pytest.mark.parametrize(
    ("family", "message"),
    [("neox", "rotary"), ("llama", "rotary"), ("gpt2", "n_key_value_heads=2 < n_heads=4")],
)
def test_refused_where_it_cannot_hold(family, message):
    model = tiny_model(family, n_key_value_heads=2) if family == "gpt2" else tiny_model(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        model.process_weights(refactor_factored_attn_matrices=True)
    with pytest.raises(ValueError, match=message):  # checked before any step runs, so nothing changed
        process_weights(model, fold_ln=True, refactor_factored_attn_matrices=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_from_pretrained_refuses_rotary_before_loading():
    directory, _ = saved("llama")
    with pytest.raises(ValueError, match="rotary"):
        lens.HookedTransformer.from_pretrained(directory, refactor_factored_attn_matrices=True)


def test_flag_type_checked():
    with pytest.raises(TypeError, match="refactor_factored_attn_matrices must be a bool"):
        ProcessingFlags(refactor_factored_attn_matrices=1)


# -- TransformerLens as the oracle ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fold_ln", [False, True])
def test_weights_equal_transformer_lens(fold_ln):
    pytest.importorskip("transformer_lens", reason="TransformerLens is an optional oracle (install 2.x)")
    from tests.compat._tl import tl_and_lens, tokens_for

    flags = dict(fold_ln=fold_ln, center_writing_weights=fold_ln, center_unembed=fold_ln, fold_value_biases=fold_ln)
    tl_model, model = tl_and_lens("gpt2", processing={**flags, "refactor_factored_attn_matrices": True})
    toks = tokens_for(model)
    close(model(toks), tl_model(toks), atol=2e-4)
    # SVD vectors are unique up to sign: a column of [W_Q; b_Q] flips together with the same column of [W_K; b_K].
    q, q_tl = (torch.cat([m.W_Q, m.b_Q[:, :, None]], dim=2) for m in (model, tl_model))
    k, k_tl = (torch.cat([m.W_K, m.b_K[:, :, None]], dim=2) for m in (model, tl_model))
    sign = torch.sign((q * q_tl).sum(2, keepdim=True))
    close(q * sign, q_tl)
    close(k * sign, k_tl)
    sign = torch.sign((model.W_V * tl_model.W_V).sum(2, keepdim=True))  # W_V = U S, W_O = V^T: same flips
    close(model.W_V * sign, tl_model.W_V)
    close(model.W_O * sign.mT, tl_model.W_O)
    close(model.b_V, tl_model.b_V)
    close(model.b_O, tl_model.b_O)


def test_transformer_lens_also_refuses_rotary():
    tl = pytest.importorskip("transformer_lens", reason="TransformerLens is an optional oracle (install 2.x)")
    cfg = tl.HookedTransformerConfig(
        n_layers=1, d_model=16, n_heads=2, d_head=8, n_ctx=8, d_vocab=10, act_fn="gelu",
        positional_embedding_type="rotary", rotary_dim=8,
    )  # fmt: skip
    model = tl.HookedTransformer(cfg)
    with pytest.raises(AssertionError, match="rotary"):  # lens raises ValueError for the same request
        model.load_and_process_state_dict(model.state_dict(), refactor_factored_attn_matrices=True)
