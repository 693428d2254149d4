"""SAELens directories and Gemma Scope params.npz, written here from their documented layouts; hub names."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import lens.sae
from lens.sae import SAE, SAEConfig
from tests.sae._ref import random_params, ref_forward


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(key, raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError("touched the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def write_saelens(path, cfg: dict, params: dict):
    path.mkdir(parents=True, exist_ok=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in params.items()}, str(path / "sae_weights.safetensors"))
    return path


V5_TOPK = {  # SAELens <= 5 layout: topk as 'standard' + activation_fn_str, k in activation_fn_kwargs
    "architecture": "standard", "d_in": 6, "d_sae": 12, "dtype": "float32", "device": "cuda:0",
    "hook_name": "blocks.2.hook_resid_pre", "hook_layer": 2, "hook_head_index": None, "model_name": "gpt2-small",
    "apply_b_dec_to_input": True, "normalize_activations": "none", "activation_fn_str": "topk",
    "activation_fn_kwargs": {"k": 4}, "context_size": 128, "prepend_bos": True, "neuronpedia_id": "x/y",
}  # fmt: skip
V6_JUMPRELU = {  # SAELens 6 layout: hook_name and model_name inside 'metadata'
    "architecture": "jumprelu", "d_in": 6, "d_sae": 12, "dtype": "float32", "device": "cpu",
    "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none",
    "metadata": {"model_name": "gemma-2-2b", "hook_name": "blocks.3.hook_mlp_out", "hook_layer": 3},
}  # fmt: skip


def check_against_reference(sae, params, arch, k=None, apply_b_dec=True):
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(3)) * 2
    f_ref, r_ref = ref_forward(params, x, arch, k=k, apply_b_dec=apply_b_dec)
    torch.testing.assert_close(sae.encode(x).double(), f_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae(x).double(), r_ref, atol=1e-5, rtol=1e-5)
    assert (f_ref != 0).any()


def test_saelens_v5_topk_directory(tmp_path):
    params = random_params(6, 12)
    sae = lens.sae.load(write_saelens(tmp_path / "sae", V5_TOPK, params))
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 4
    assert sae.hook_name == "blocks.2.hook_resid_pre"
    assert sae.cfg.device == "cpu" or torch.cuda.is_available()  # a cuda cfg.json loads on the CPU here
    assert sae.cfg.metadata["model_name"] == "gpt2-small" and sae.cfg.metadata["context_size"] == 128
    check_against_reference(sae, params, "topk", k=4)


def test_saelens_v6_jumprelu_directory(tmp_path):
    params = random_params(6, 12, jumprelu=True)
    sae = lens.sae.load(str(write_saelens(tmp_path / "j", V6_JUMPRELU, params)))
    assert sae.cfg.architecture == "jumprelu" and sae.hook_name == "blocks.3.hook_mlp_out"
    assert not sae.cfg.apply_b_dec_to_input
    check_against_reference(sae, params, "jumprelu", apply_b_dec=False)


def test_hook_name_override(tmp_path):
    sae = lens.sae.load(write_saelens(tmp_path / "s", V6_JUMPRELU, random_params(6, 12, True)), hook_name="hook_embed")
    assert sae.hook_name == "hook_embed"


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_save_load_round_trip(tmp_path, arch):
    cfg = SAEConfig(
        arch, d_in=6, d_sae=12, hook_name="blocks.1.hook_resid_post", k=5 if arch == "topk" else None,
        normalize_activations="expected_average_only_in", metadata={"model_name": "m", "source": "t"},
    )  # fmt: skip
    sae = SAE(cfg, seed=3)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    sae.norm_scaling_factor = 0.7
    sae.save(tmp_path / "out")
    raw = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert raw["architecture"] == arch and raw["d_in"] == 6 and raw["hook_name"] == "blocks.1.hook_resid_post"
    assert raw["metadata"]["hook_name"] == "blocks.1.hook_resid_post" and raw["hook_layer"] == 1
    if arch == "topk":
        assert raw["k"] == 5 and raw["activation_fn_kwargs"] == {"k": 5}
    back = lens.sae.load(tmp_path / "out")
    assert back.cfg == sae.cfg and back.norm_scaling_factor == 0.7
    for name, p in sae.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], p)
    x = torch.randn(4, 6)
    torch.testing.assert_close(back(x), sae(x))


def test_transcoder_round_trip(tmp_path):
    cfg = SAEConfig("standard", d_in=6, d_sae=12, hook_name="blocks.0.ln2.hook_normalized",
                    hook_name_out="blocks.0.hook_mlp_out", d_out=4, apply_b_dec_to_input=False)  # fmt: skip
    back = lens.sae.load(SAE(cfg).save(tmp_path / "tc"))
    assert back.cfg.hook_name_out == "blocks.0.hook_mlp_out" and back.d_out == 4


def write_npz(path, params):
    path.mkdir(parents=True, exist_ok=True)
    np.savez(path / "params.npz", **{k: v.numpy() for k, v in params.items()})
    return path


def test_gemma_scope_npz_from_directory_name(tmp_path):
    params = random_params(6, 12, jumprelu=True)
    d = write_npz(tmp_path / "gemma-scope-2b-pt-res" / "layer_12" / "width_16k" / "average_l0_82", params)
    sae = lens.sae.load(d)
    assert sae.cfg.architecture == "jumprelu" and sae.hook_name == "blocks.12.hook_resid_post"
    assert not sae.cfg.apply_b_dec_to_input
    check_against_reference(sae, params, "jumprelu", apply_b_dec=False)
    mlp = write_npz(tmp_path / "gemma-scope-2b-pt-mlp" / "layer_3" / "width_16k" / "average_l0_5", params)
    assert lens.sae.load(mlp / "params.npz").hook_name == "blocks.3.hook_mlp_out"


def test_gemma_scope_needs_a_hook_name(tmp_path):
    d = write_npz(tmp_path / "somewhere", random_params(6, 12, jumprelu=True))
    with pytest.raises(ValueError, match="layer_<N>.*hook_name="):
        lens.sae.load(d)
    assert lens.sae.load(d, hook_name="blocks.0.hook_resid_pre").hook_name == "blocks.0.hook_resid_pre"


def test_gemma_scope_missing_array(tmp_path):
    params = random_params(6, 12, jumprelu=True)
    del params["threshold"]
    with pytest.raises(ValueError, match="'threshold'"):
        lens.sae.load(write_npz(tmp_path / "layer_1", params))


@pytest.mark.parametrize(
    "drop, change, match",
    [
        ("d_in", {}, r"lacks the required field 'd_in'"),
        ("d_sae", {}, r"lacks the required field 'd_sae'"),
        ("architecture", {}, r"lacks the required field 'architecture'"),
        ("hook_name", {}, r"lacks the required field 'hook_name'"),
        (None, {"architecture": "gated"}, r"'architecture' is 'gated'"),
        (None, {"d_sae": 13}, r"'W_enc' has shape \(6, 12\), expected \(6, 13\)"),
    ],
)
def test_bad_cfg_json(tmp_path, drop, change, match):
    cfg = {k: v for k, v in V5_TOPK.items() if k != drop}
    cfg.update(change)
    with pytest.raises(ValueError, match=match):
        lens.sae.load(write_saelens(tmp_path / "bad", cfg, random_params(6, 12)))


def test_missing_weights_and_paths(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "cfg.json").write_text(json.dumps(V5_TOPK))
    with pytest.raises(FileNotFoundError, match="sae_weights.safetensors"):
        lens.sae.load(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lens.sae.load(tmp_path / "nope")


def cache_repo(cache, repo, commit, files: dict):
    storage = cache / f"models--{repo.replace('/', '--')}"
    snap = storage / "snapshots" / commit
    for rel, writer in files.items():
        writer(snap / rel)
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(commit)


def test_hub_names_through_a_fake_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cache = tmp_path / "hf" / "hub"
    p1, p2 = random_params(6, 12), random_params(6, 12, jumprelu=True, seed=5)
    cache_repo(
        cache, "someone/gpt2-saes", "a" * 40, {"blocks.2.hook_resid_pre": lambda d: write_saelens(d, V5_TOPK, p1)}
    )
    cache_repo(cache, "google/gemma-scope-2b-pt-res", "b" * 40,
               {"layer_7/width_16k/average_l0_9": lambda d: write_npz(d, p2)})  # fmt: skip
    sae = lens.sae.load("someone/gpt2-saes", subfolder="blocks.2.hook_resid_pre")
    check_against_reference(sae, p1, "topk", k=4)
    same = lens.sae.load("someone/gpt2-saes/blocks.2.hook_resid_pre")
    torch.testing.assert_close(same.W_enc, sae.W_enc)
    gs = lens.sae.load("google/gemma-scope-2b-pt-res/layer_7/width_16k/average_l0_9")
    assert gs.hook_name == "blocks.7.hook_resid_post"
    check_against_reference(gs, p2, "jumprelu", apply_b_dec=False)
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE.*hf download someone/gpt2-saes"):
        lens.sae.load("someone/gpt2-saes/blocks.9.hook_resid_pre")
    with pytest.raises(FileNotFoundError, match="not in the cache"):
        lens.sae.load("someone/other-saes/x")
