"""SAEs on ``attn.hook_z`` with the heads flattened (SAELens's ``reshape_activations: "hook_z"``): loaded from
SAELens files (the field, or SAELens < 6's hook_z name) and Gemma Scope's ``-att-`` releases, attached (cache,
error term, splicing), evaluated, trained and saved, against the hand-written reference on ``z.flatten(-2)``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import lens
import lens.sae
from lens.sae import SAE, SAEConfig
from tests.sae._ref import random_params, ref_forward

HOOK = "blocks.1.attn.hook_z"


@pytest.fixture(scope="module")
def model():
    return lens.zoo.load("gelu-4l")


@pytest.fixture
def toks():
    return torch.tensor([[1, 5, 9, 20, 33, 7], [2, 4, 6, 8, 10, 12]])


def width(model):
    return model.cfg.n_heads * model.cfg.d_head


def write(path, cfg: dict, params: dict):
    path.mkdir(parents=True, exist_ok=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in params.items()}, str(path / "sae_weights.safetensors"))
    return path


@pytest.fixture
def loaded(model, tmp_path):
    d = width(model)
    params = random_params(d, 40, seed=2)
    cfg = {"architecture": "standard", "d_in": d, "d_sae": 40, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "hook_z",
           "metadata": {"model_name": "gelu-4l", "hook_name": HOOK, "hook_layer": 1}}  # fmt: skip
    return lens.sae.load(write(tmp_path / "sae", cfg, params)), params


def z_of(model, toks):
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=[HOOK])
    return cache[HOOK]


def test_loaded_sae_encodes_the_flattened_heads(model, toks, loaded):
    sae, params = loaded
    assert sae.cfg.reshape_activations == "hook_z" and sae.d_in == width(model)
    z = z_of(model, toks)  # [batch, pos, head, d_head]
    f_ref, r_ref = ref_forward(params, z.flatten(-2), "standard")
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(z).double(), f_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae.encode(z.flatten(-2)), sae.encode(z))  # flat input read as is
        out = sae(z)
        assert out.shape == z.shape  # forward gives back the heads
        torch.testing.assert_close(out.double(), r_ref.reshape(z.shape), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae.reconstruct(z), out)
    assert (f_ref > 0).any()


def test_attached_cache_splice_and_error_term(model, toks, loaded):
    sae, params = loaded
    z = z_of(model, toks)
    f_ref, r_ref = ref_forward(params, z.flatten(-2), "standard")
    with torch.no_grad():
        plain = model(toks)
        expected = model.run_with_hooks(toks, fwd_hooks=[(HOOK, lambda x, hook: r_ref.reshape(x.shape).to(x.dtype))])
        with model.saes([sae]):
            spliced, cache = model.run_with_cache(toks)
        with model.saes([sae], use_error_term=True):
            kept = model(toks)
    torch.testing.assert_close(cache[f"{HOOK}.hook_sae_acts_post"].double(), f_ref, atol=1e-5, rtol=1e-5)
    assert cache[f"{HOOK}.hook_sae_input"].shape == (*toks.shape, width(model))  # the SAE's hooks: flat
    assert cache[HOOK].shape == z.shape  # what flows on has the heads again
    torch.testing.assert_close(spliced, expected, atol=1e-4, rtol=1e-4)
    assert (spliced - plain).abs().max() > 1e-2  # the splice mattered
    torch.testing.assert_close(kept, plain, atol=1e-4, rtol=1e-4)


def test_evaluate_counts_one_row_per_token(model, toks, loaded):
    sae, params = loaded
    m = lens.sae.evaluate(model, sae, toks, exclude_bos=False)
    z = z_of(model, toks).flatten(-2).reshape(-1, width(model)).double()
    f_ref, r_ref = ref_forward(params, z, "standard")
    ev = 1 - (z - r_ref).pow(2).sum() / (z - z.mean(0)).pow(2).sum()
    assert m["tokens"] == toks.numel()
    assert m["explained_variance"] == pytest.approx(float(ev), rel=1e-4, abs=1e-5)
    assert m["l0"] == pytest.approx(float((f_ref > 0).sum(1).double().mean()), rel=1e-6)


def test_saelens_5_hook_z_name_and_gemma_scope_att_release(model, tmp_path):
    d = width(model)
    old = {"architecture": "standard", "d_in": d, "d_sae": 16, "hook_name": HOOK, "hook_layer": 1,
           "hook_head_index": None, "dtype": "float32", "device": "cpu"}  # fmt: skip
    assert lens.sae.load(write(tmp_path / "v5", old, random_params(d, 16))).cfg.reshape_activations == "hook_z"
    per_head = {**old, "d_in": model.cfg.d_head, "hook_head_index": 3}
    sae = lens.sae.load(write(tmp_path / "head", per_head, random_params(model.cfg.d_head, 16)))
    assert sae.cfg.reshape_activations == "none"
    folder = tmp_path / "gemma-scope-2b-pt-att" / "layer_1" / "width_16k" / "average_l0_20"
    folder.mkdir(parents=True)
    p = random_params(d, 16, jumprelu=True)
    np.savez(folder / "params.npz", **{k: v.numpy() for k, v in p.items()})
    gs = lens.sae.load(folder / "params.npz")
    assert gs.hook_name == HOOK and gs.cfg.reshape_activations == "hook_z"
    model.add_sae(gs)
    try:
        _, cache = model.run_with_cache(torch.tensor([[1, 2, 3]]))
        assert cache[f"{HOOK}.hook_sae_acts_post"].shape == (1, 3, 16)
    finally:
        model.reset_saes()


def test_width_mismatch_names_heads_times_d_head(model):
    wrong = SAE(SAEConfig("standard", d_in=model.cfg.d_head, d_sae=8, hook_name=HOOK, reshape_activations="hook_z"))
    n, dh = model.cfg.n_heads, model.cfg.d_head
    with pytest.raises(ValueError, match=rf"d_in={dh} does not match hook .*width {n * dh} .*{n} \* {dh}"):
        model.add_sae(wrong)
    with pytest.raises(ValueError, match=r"reshape_activations must be one of"):
        SAEConfig("standard", d_in=8, d_sae=8, hook_name=HOOK, reshape_activations="heads")


def test_trained_on_hook_z_it_reads_the_heads_flat(model, tmp_path):
    docs = [f"def f{i}(x):\n    return x * {i}\n" * 3 for i in range(8)]
    sae = lens.sae.train(docs, HOOK, 64, "topk", 8, model=model, context_size=16, steps=5, batch_size=32,
                         progress=False)  # fmt: skip
    assert sae.cfg.reshape_activations == "hook_z" and sae.d_in == width(model)
    back = lens.sae.load(sae.save(tmp_path / "z"))
    assert back.cfg.reshape_activations == "hook_z"
    with model.saes([back]):
        _, cache = model.run_with_cache(model.to_tokens(docs[0])[:, :16])
    assert cache[f"{HOOK}.hook_sae_acts_post"].shape[-1] == 64
    assert ((cache[f"{HOOK}.hook_sae_acts_post"] > 0).sum(-1) <= 8).all()


def test_trained_from_a_store_of_hook_z_rows(model, tmp_path):
    import lens.store

    docs = [f"class C{i}:\n    pass\n" * 4 for i in range(8)]
    folder = lens.store.harvest(model, docs, hooks=[HOOK], context_size=16, batch_size=4, out_dir=tmp_path / "s",
                                progress=False)  # fmt: skip
    store = lens.store.open(folder)
    assert tuple(store[HOOK].shape[1:]) == (model.cfg.n_heads, model.cfg.d_head)
    sae = lens.sae.train(store, HOOK, 32, "topk", 4, steps=3, batch_size=16, progress=False)
    assert sae.cfg.reshape_activations == "hook_z" and sae.d_in == width(model)
