"""``act_fn="solu_ln"``: SoLU with its LayerNorm, as TransformerLens (``mlp.hook_mid``, ``mlp.ln``).

Oracles: the MLP written out by hand (``mid = pre * softmax(pre)``, a LayerNorm over ``d_mlp``, ``W_out``), the
two LayerNorm kernels against each other (fused when unhooked, explicit when ``hook_scale`` may be edited),
and, optionally, TransformerLens 2.x on identical weights (every cached activation and the logits).
"""

from __future__ import annotations

import pytest
import torch

import lens
from tests.tiny import tiny_model

TOKENS = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(0))
MLP_HOOKS = ("hook_pre", "hook_mid", "ln.hook_scale", "ln.hook_normalized", "hook_post")


def _solu_model(**overrides) -> lens.HookedTransformer:
    model = tiny_model("gpt2", act_fn="solu_ln", **overrides)
    model.init_weights(seed=3, std=0.3)  # O(1) activations: SoLU's softmax is far from uniform
    with torch.no_grad():
        g = torch.Generator().manual_seed(4)
        for name, p in model.named_parameters():
            if name.endswith((".w", ".b")):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("normalization", ["LN", "RMS", None])
def test_mlp_is_solu_then_layernorm(normalization):
    model = _solu_model(normalization=normalization)
    mlp = model.blocks[1].mlp
    names = [f"blocks.1.mlp.{h}" for h in MLP_HOOKS]
    _, cache = model.run_with_cache(TOKENS, names_filter=names + ["blocks.1.hook_mlp_out"])
    x = torch.randn(2, 7, model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    pre = x @ mlp.W_in + mlp.b_in
    mid = pre * torch.softmax(pre, dim=-1)
    centered = mid - mid.mean(-1, keepdim=True)
    scale = (centered.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
    post = centered / scale
    if normalization == "LN":
        post = post * mlp.ln.w + mlp.ln.b
        assert {n for n, _ in mlp.named_parameters()} >= {"ln.w", "ln.b"}
    else:  # TransformerLens's LayerNormPre: centre and scale only
        assert not list(mlp.ln.parameters())
    torch.testing.assert_close(mlp(x), post @ mlp.W_out + mlp.b_out, atol=1e-5, rtol=1e-5)
    got = cache["blocks.1.mlp.hook_post"]
    assert got.shape == cache["blocks.1.mlp.hook_mid"].shape == (2, 7, model.cfg.d_mlp)
    assert cache["blocks.1.mlp.ln.hook_scale"].shape == (2, 7, 1)
    mid_c = cache["blocks.1.mlp.hook_mid"]
    torch.testing.assert_close(mid_c, cache["blocks.1.mlp.hook_pre"] * cache["blocks.1.mlp.hook_pre"].softmax(-1))
    torch.testing.assert_close(got, cache["blocks.1.mlp.ln.hook_normalized"], atol=0, rtol=0)


def test_fused_and_explicit_layernorm_agree_and_scale_edits_take_effect():
    model = _solu_model()
    name = "blocks.0.mlp.ln.hook_scale"
    clean = model(TOKENS)
    explicit = model.run_with_hooks(TOKENS, fwd_hooks=[(name, lambda s, hook: s.clone())])  # may edit: explicit
    torch.testing.assert_close(explicit, clean, atol=1e-5, rtol=1e-5)
    doubled = model.run_with_hooks(TOKENS, fwd_hooks=[(name, lambda s, hook: s * 2)])
    mlp_out = {}
    for key, hooks in (("clean", []), ("doubled", [(name, lambda s, hook: s * 2)])):
        with model.hooks(fwd_hooks=hooks):
            _, c = model.run_with_cache(TOKENS, names_filter="blocks.0.mlp.hook_post")
        mlp_out[key] = c["blocks.0.mlp.hook_post"]
    ln = model.blocks[0].mlp.ln
    # doubling the scale halves the normalised part: post = n * w + b -> (n / 2) * w + b
    torch.testing.assert_close((mlp_out["doubled"] - ln.b) * 2, mlp_out["clean"] - ln.b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(doubled, clean, atol=1e-3)


def test_solu_with_gated_mlp_is_refused():
    with pytest.raises(ValueError, match="solu_ln.*gated_mlp"):
        lens.TransformerConfig(n_layers=1, d_model=8, n_heads=2, d_vocab=10, n_ctx=8, act_fn="solu_ln", gated_mlp=True)


def test_weight_processing_keeps_log_probs():
    model = _solu_model()
    ref = model(TOKENS).log_softmax(-1)
    model.process_weights(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)
    torch.testing.assert_close(model(TOKENS).log_softmax(-1), ref, atol=1e-4, rtol=1e-4)


# -- TransformerLens as the oracle -------------------------------------------------------------------------
@pytest.mark.parametrize("normalization", ["LN", None])
def test_matches_transformer_lens_on_identical_weights(normalization):
    tl = pytest.importorskip("transformer_lens", reason="TransformerLens is an optional oracle (install it to compare)")
    model = _solu_model(normalization=normalization)
    cfg = model.cfg
    tl_model = tl.HookedTransformer(
        tl.HookedTransformerConfig(
            n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_head, d_mlp=cfg.d_mlp,
            d_vocab=cfg.d_vocab, n_ctx=cfg.n_ctx, act_fn="solu_ln", normalization_type=normalization,
            eps=cfg.eps, device="cpu", dtype=torch.float32, default_prepend_bos=False,
        ),
        move_to_device=False,
    )  # fmt: skip
    with torch.no_grad():
        tl_model.embed.W_E.copy_(model.W_E)
        tl_model.pos_embed.W_pos.copy_(model.W_pos[: cfg.n_ctx])
        tl_model.unembed.W_U.copy_(model.W_U)
        tl_model.unembed.b_U.copy_(model.b_U)
        norms = [("ln_final", "ln_final")] if normalization else []
        for i, (tb, lb) in enumerate(zip(tl_model.blocks, model.blocks, strict=True)):
            for attr in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"):
                getattr(tb.attn, attr).copy_(getattr(lb.attn, attr))
            for attr in ("W_in", "b_in", "W_out", "b_out"):
                getattr(tb.mlp, attr).copy_(getattr(lb.mlp, attr))
            parts = ("ln1", "ln2", "mlp.ln") if normalization else ()
            norms += [(f"blocks.{i}.{p}", f"blocks.{i}.{p}") for p in parts]
        for tl_name, lens_name in norms:
            tl_model.get_submodule(tl_name).w.copy_(model.get_submodule(lens_name).w)
            tl_model.get_submodule(tl_name).b.copy_(model.get_submodule(lens_name).b)
    tl_logits, tl_cache = tl_model.run_with_cache(TOKENS)
    logits, cache = model.run_with_cache(TOKENS)
    for name in cache.keys():
        assert name in tl_cache, name
        torch.testing.assert_close(cache[name], tl_cache[name], atol=1e-4, rtol=1e-4, msg=name)
    for i in range(cfg.n_layers):
        assert {f"blocks.{i}.mlp.{h}" for h in MLP_HOOKS} <= set(tl_cache.keys()) & set(cache.keys())
    torch.testing.assert_close(logits, tl_logits, atol=1e-4, rtol=1e-4)
