"""model.add_sae / reset_saes / saes on lens.zoo's gelu-4l, against oracles built from plain run_with_hooks."""

from __future__ import annotations

import pytest
import torch

import lens
from lens.sae import SAE, SAEConfig

HOOK = "blocks.1.hook_resid_post"
SUFFIXES = ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_output")


@pytest.fixture(scope="module")
def model():
    return lens.zoo.load("gelu-4l")


@pytest.fixture
def toks():
    return torch.tensor([[1, 5, 9, 20, 33, 7], [2, 4, 6, 8, 10, 12]])


def make_sae(model, arch="standard", hook=HOOK, d_sae=48, seed=0):
    cfg = SAEConfig(arch, d_in=model.cfg.d_model, d_sae=d_sae, hook_name=hook, k=6 if arch == "topk" else None)
    sae = SAE(cfg, seed=seed)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        sae.b_enc.copy_(torch.rand(d_sae, generator=g) * 0.2)
        sae.b_dec.copy_(torch.randn(model.cfg.d_model, generator=g) * 0.1)
    return sae


def oracle(model, toks, hook, fn):
    with torch.no_grad():
        return model.run_with_hooks(toks, fwd_hooks=[(hook, lambda x, hook: fn(x))])


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_reconstruction_replaces_the_activation(model, toks, arch):
    sae = make_sae(model, arch)
    expected = oracle(model, toks, HOOK, sae.reconstruct)
    plain = model(toks).detach()
    with model.saes([sae]):
        with torch.no_grad():
            got = model(toks)
    torch.testing.assert_close(got, expected)
    assert (got - plain).abs().max() > 1e-3  # the SAE changed something


def test_cache_has_the_sae_hooks(model, toks):
    sae = make_sae(model)
    with model.saes([sae], use_error_term=True):
        _, cache = model.run_with_cache(toks)
    keys = set(cache.keys())
    for s in (*SUFFIXES, "hook_sae_error"):
        assert f"{HOOK}.{s}" in keys
    _, plain_cache = model.run_with_cache(toks)
    torch.testing.assert_close(cache[f"{HOOK}.hook_sae_input"], plain_cache[HOOK])
    torch.testing.assert_close(cache[f"{HOOK}.hook_sae_recons"], sae.reconstruct(plain_cache[HOOK]))
    err = cache[f"{HOOK}.hook_sae_error"]
    torch.testing.assert_close(err, plain_cache[HOOK] - sae.reconstruct(plain_cache[HOOK]))
    assert f"{HOOK}.hook_sae_input" not in model.hook_dict and "hook_sae_input" in sae.hook_dict  # restored names
    with model.saes([sae]):
        _, cache = model.run_with_cache(toks)
    assert f"{HOOK}.hook_sae_error" not in cache.keys() and f"{HOOK}.hook_sae_output" in cache.keys()


def test_error_term_keeps_the_logits(model, toks):
    sae = make_sae(model)
    plain = model(toks).detach()
    with model.saes([sae], use_error_term=True), torch.no_grad():
        got = model(toks)
    torch.testing.assert_close(got, plain, atol=1e-4, rtol=1e-4)


def test_feature_ablation_matches_the_oracle(model, toks):
    sae = make_sae(model)
    feats = [0, 3, 7]

    def ablated_recons(x):
        f = sae.encode(x).clone()
        f[..., feats] = 0
        return sae.decode(f, x)

    def ablate(f, hook):
        f = f.clone()
        f[..., feats] = 0
        return f

    for use_error in (False, True):
        if use_error:
            expected = oracle(model, toks, HOOK, lambda x: ablated_recons(x) + (x - sae.reconstruct(x)))
        else:
            expected = oracle(model, toks, HOOK, ablated_recons)
        with model.saes([sae], use_error_term=use_error), torch.no_grad():
            got = model.run_with_hooks(toks, fwd_hooks=[(f"{HOOK}.hook_sae_acts_post", ablate)])
            unablated = model(toks)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        assert (got - unablated).abs().max() > 1e-4


def test_gradients_reach_feature_acts(model, toks):
    sae = make_sae(model)
    grads = {}
    with model.saes([sae]):
        with model.hooks(bwd_hooks=[(f"{HOOK}.hook_sae_acts_post", lambda g, hook: grads.setdefault("g", g))]):
            loss = model(toks, return_type="loss")
            loss.backward()
    assert grads["g"].shape == (2, 6, 48) and grads["g"].abs().sum() > 0
    assert sae.W_enc.grad is not None and sae.W_enc.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_reset_and_context_restore_the_model(model, toks):
    plain = model(toks).detach()
    names = set(model.hook_dict)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sae = make_sae(model)
    model.add_sae(sae)
    assert not torch.allclose(model(toks), plain)
    assert set(model.state_dict()) == set(sd)  # the SAE's parameters are not the model's
    model.reset_saes()
    torch.testing.assert_close(model(toks).detach(), plain, atol=0, rtol=0)
    assert set(model.hook_dict) == names
    with pytest.raises(RuntimeError, match="boom"):
        with model.saes([sae]):
            assert f"{HOOK}.hook_sae_acts_post" in model.hook_dict
            raise RuntimeError("boom")
    torch.testing.assert_close(model(toks).detach(), plain, atol=0, rtol=0)
    assert set(model.hook_dict) == names and model.acts_to_saes == {}
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, sd[k], atol=0, rtol=0)


def test_generate_with_a_steering_hook(model):
    sae = make_sae(model)
    prompt = torch.tensor([[1, 5, 9]])
    kw = dict(max_new_tokens=5, do_sample=False)

    def steer(f, hook):
        f = f.clone()
        f[..., 2] = 50.0
        return f

    with model.saes([sae], use_error_term=True):
        plain = model.generate(prompt, **kw)
        with model.hooks(fwd_hooks=[(f"{HOOK}.hook_sae_acts_post", steer)]):
            steered = model.generate(prompt, **kw)

    # oracle: the same steering as a plain hook at HOOK (recons of the steered features + the clean error)
    def steer_plain(x, hook):
        f = sae.encode(x).clone()
        f[..., 2] = 50.0
        return (sae.decode(f, x) + (x - sae.reconstruct(x))).detach()

    with model.hooks(fwd_hooks=[(HOOK, steer_plain)]):
        expected = model.generate(prompt, **kw)
    assert torch.equal(plain, model.generate(prompt, **kw))  # error term: generation unchanged
    assert torch.equal(steered, expected)
    assert not torch.equal(steered, plain)


def test_transcoder_replaces_the_out_hook(model, toks):
    d = model.cfg.d_model
    cfg = SAEConfig("standard", d_in=d, d_sae=40, hook_name="blocks.2.ln2.hook_normalized",
                    hook_name_out="blocks.2.hook_mlp_out", apply_b_dec_to_input=False)  # fmt: skip
    tc = SAE(cfg, seed=4)
    with torch.no_grad():
        tc.b_dec.normal_(0, 0.1)
        tc.b_enc.fill_(0.1)
    seen = {}

    def read(x, hook):
        seen["x"] = x.detach()

    def write(y, hook):
        return tc.reconstruct(seen["x"])

    with torch.no_grad():
        expected = model.run_with_hooks(toks, fwd_hooks=[("blocks.2.ln2.hook_normalized", read),
                                                         ("blocks.2.hook_mlp_out", write)])  # fmt: skip
        plain = model(toks)
        with model.saes([tc]):
            got, cache = model.run_with_cache(toks)
        with model.saes([tc], use_error_term=True):
            kept = model(toks)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got - plain).abs().max() > 1e-3
    torch.testing.assert_close(kept, plain, atol=1e-4, rtol=1e-4)
    assert "blocks.2.ln2.hook_normalized.hook_sae_acts_post" in cache.keys()
    torch.testing.assert_close(cache["blocks.2.hook_mlp_out"], tc.reconstruct(seen["x"]))


def test_bad_attachments(model, toks):
    plain = model(toks).detach()
    names = set(model.hook_dict)
    wrong = SAE(SAEConfig("standard", d_in=model.cfg.d_model + 1, d_sae=8, hook_name=HOOK))
    with pytest.raises(ValueError, match=rf"d_in={model.cfg.d_model + 1}.*{HOOK}.*width {model.cfg.d_model}"):
        model.add_sae(wrong)
    mlp = SAE(SAEConfig("standard", d_in=model.cfg.d_model, d_sae=8, hook_name="blocks.0.mlp.hook_post"))
    with pytest.raises(ValueError, match=rf"d_in={model.cfg.d_model}.*blocks.0.mlp.hook_post.*{model.cfg.d_mlp}"):
        model.add_sae(mlp)
    missing = SAE(SAEConfig("standard", d_in=model.cfg.d_model, d_sae=8, hook_name="blocks.9.hook_resid_post"))
    with pytest.raises(ValueError, match=r"'blocks.9.hook_resid_post' is not a hook of this model"):
        model.add_sae(missing)
    with pytest.raises(ValueError, match="blocks.9"):
        with model.saes([make_sae(model), missing]):
            pass
    sae = make_sae(model)
    model.add_sae(sae)
    with pytest.raises(ValueError, match="already attached"):
        model.add_sae(make_sae(model, seed=2))
    model.reset_saes()
    assert set(model.hook_dict) == names
    torch.testing.assert_close(model(toks).detach(), plain, atol=0, rtol=0)
