"""SAE math against a hand-written reference, for every architecture and normalisation; config validation."""

from __future__ import annotations

import pytest
import torch

from lens.sae import SAE, SAEConfig
from tests.sae._ref import random_params, ref_forward, set_params

HOOK = "blocks.0.hook_resid_post"


def make(arch, d_in=6, d_sae=10, **kw):
    cfg = SAEConfig(arch, d_in=d_in, d_sae=d_sae, hook_name=HOOK, k=3 if arch == "topk" else None, **kw)
    return set_params(SAE(cfg), random_params(d_in, d_sae, jumprelu=arch == "jumprelu"))


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
@pytest.mark.parametrize("apply_b_dec", [True, False])
@pytest.mark.parametrize("norm", ["none", "expected_average_only_in", "constant_norm_rescale", "layer_norm"])
def test_encode_decode_match_the_reference(arch, apply_b_dec, norm):
    sae = make(arch, apply_b_dec_to_input=apply_b_dec, normalize_activations=norm)
    x = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(1)) * 3 + 1
    scale = None
    if norm == "expected_average_only_in":
        scale = sae.set_norm_scaling_factor(x)
        assert scale == pytest.approx(6**0.5 / x.norm(dim=-1).mean().item(), rel=1e-5)
    p = {n: t.detach() for n, t in sae.named_parameters()}
    f_ref, r_ref = ref_forward(p, x, arch, k=3, apply_b_dec=apply_b_dec, norm=norm, scale=scale)
    f = sae.encode(x)
    assert f.shape == (2, 3, 10)
    torch.testing.assert_close(f.double(), f_ref, atol=1e-5, rtol=1e-5)
    assert (f != 0).any()  # the comparison is not between two zero tensors
    torch.testing.assert_close(sae(x).double(), r_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.decode(f, x).double(), r_ref, atol=1e-5, rtol=1e-5)
    if arch == "topk":
        assert ((f != 0).sum(-1) <= 3).all()


def test_topk_takes_topk_of_pre_then_relu():
    """SAELens's TopK: the k largest pre-activations, then ReLU (a negative one among them gives 0, not the next)."""
    sae = SAE(SAEConfig("topk", d_in=2, d_sae=3, hook_name=HOOK, k=2, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2, 3))
        sae.b_enc.copy_(torch.tensor([0.0, 0.0, -5.0]))
    f = sae.encode(torch.tensor([[1.0, -1.0]]))  # pre = [1, -1, -5]: top-2 = {1, -1} -> [1, 0, 0]
    assert f.tolist() == [[1.0, 0.0, 0.0]]


def test_init_is_saelens_like():
    sae = SAE(SAEConfig("jumprelu", d_in=8, d_sae=20, hook_name=HOOK))
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(20))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T)
    assert sae.b_enc.abs().sum() == 0 and sae.b_dec.abs().sum() == 0 and sae.threshold.abs().sum() == 0
    assert sae.W_enc.shape == (8, 20) and sae.W_dec.shape == (20, 8)
    assert (sae.hook_name, sae.d_in, sae.d_sae) == (HOOK, 8, 20)
    assert not hasattr(SAE(SAEConfig("standard", d_in=8, d_sae=20, hook_name=HOOK)), "threshold")


def test_standalone_hooks_fire_with_saelens_names():
    sae = make("standard")
    x = torch.randn(4, 6)
    out, cache = sae.run_with_cache(x)
    assert set(cache.keys()) == {
        "hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_output"
    }  # fmt: skip
    torch.testing.assert_close(cache["hook_sae_output"], out)
    ablated = sae.run_with_hooks(x, fwd_hooks=[("hook_sae_acts_post", lambda f, hook: f * 0)])
    torch.testing.assert_close(ablated, sae.b_dec.detach().expand(4, 6))


def test_fold_norm_scaling_factor_keeps_the_function():
    sae = make("standard", normalize_activations="expected_average_only_in")
    x = torch.randn(5, 6) * 4
    sae.set_norm_scaling_factor(x)
    before = sae(x)
    sae.fold_activation_norm_scaling_factor()
    assert sae.cfg.normalize_activations == "none"
    torch.testing.assert_close(sae(x), before, atol=1e-5, rtol=1e-5)


def test_expected_average_without_factor_says_so():
    sae = make("standard", normalize_activations="expected_average_only_in")
    with pytest.raises(ValueError, match="norm_scaling_factor"):
        sae.encode(torch.randn(1, 6))


def test_wrong_input_width():
    with pytest.raises(ValueError, match="width 5.*d_in=6"):
        make("standard").encode(torch.randn(2, 5))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(architecture="gated"), r"architecture.*'gated'"),
        (dict(d_in=0), r"d_in.*positive int.*0"),
        (dict(d_sae=2.5), r"d_sae.*positive int.*2.5"),
        (dict(d_in=True), r"d_in.*positive int"),
        (dict(architecture="topk"), r"k is required.*topk"),
        (dict(architecture="topk", k=99), r"k=99.*d_sae=16"),
        (dict(k=3), r"k is only for architecture='topk'"),
        (dict(normalize_activations="batch"), r"normalize_activations.*'batch'"),
        (dict(dtype="int8"), r"dtype.*'int8'"),
        (dict(hook_name=""), r"hook_name"),
        (dict(d_out=5), r"d_out=5.*transcoder"),
        (dict(hook_name_out="blocks.0.hook_mlp_out", d_out=5), r"apply_b_dec_to_input.*d_out == d_in"),
    ],
)
def test_bad_config(kwargs, match):
    base = dict(architecture="standard", d_in=8, d_sae=16, hook_name=HOOK)
    with pytest.raises(ValueError, match=match):
        SAEConfig(**{**base, **kwargs})


def test_transcoder_config_and_shapes():
    cfg = SAEConfig(
        "standard", d_in=8, d_sae=16, hook_name="blocks.0.ln2.hook_normalized", hook_name_out="blocks.0.hook_mlp_out",
        d_out=5, apply_b_dec_to_input=False,
    )  # fmt: skip
    sae = SAE(cfg)
    assert sae.W_dec.shape == (16, 5) and sae.b_dec.shape == (5,) and sae.W_enc.shape == (8, 16)
    assert sae(torch.randn(3, 8)).shape == (3, 5)
