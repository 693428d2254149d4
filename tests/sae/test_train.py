"""lens.sae.train: recovery of a known sparse dictionary, unit-norm decoder rows, bit-exact resume, the three
sources (an activation tensor, an activation store, a model over text) and the argument checks."""

from __future__ import annotations

import shutil

import pytest
import torch

import lens
import lens.sae
import lens.store
from lens.sae.train import STATE_FILE

HOOK = "blocks.0.hook_resid_post"
DOCS = [f"text {i}: " + "lorem ipsum dolor sit amet, " * (i % 4 + 1) for i in range(20)]


def sparse_data(n=8192, d=32, m=48, s=3, seed=0):
    """Activations = sparse codes (s of m atoms, weights in [0.5, 2.5]) @ a random unit-norm dictionary."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(m, d, generator=g)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    codes = torch.zeros(n, m)
    idx = torch.stack([torch.randperm(m, generator=g)[:s] for _ in range(n)])
    codes.scatter_(1, idx, torch.rand(n, s, generator=g) * 2 + 0.5)
    return codes @ dictionary


def ev(sae, x):
    with torch.no_grad():
        r = sae.reconstruct(x)
    return float(1 - (r - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


@pytest.fixture(scope="module")
def model():
    return lens.zoo.load("attn-only-2l")


@pytest.fixture(scope="module")
def store(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("sae-train") / "store"
    lens.store.harvest(model, DOCS, hooks=[HOOK], context_size=16, batch_size=4, out_dir=out, max_tokens=16 * 12,
                       shard_contexts=3, progress=False)  # fmt: skip
    return lens.store.open(out)


def test_topk_recovers_a_sparse_dictionary():
    x = sparse_data()
    kw = dict(d_sae=48, k=3, lr=1e-2, batch_size=256, dead_after_tokens=2000, progress=False)
    early = lens.sae.train(x, "h", steps=5, **kw)
    sae = lens.sae.train(x, "h", steps=800, **kw)
    assert ev(sae, x) > 0.9 > ev(early, x)
    assert sae.cfg.metadata["training"]["metrics"]["explained_variance"] > 0.85
    assert sae.cfg.metadata["training"]["metrics"]["l0"] <= 3
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(48), atol=1e-5, rtol=0)
    assert sae.d_in == 32 and sae.d_sae == 48 and sae.cfg.k == 3 and sae.hook_name == "h"


def test_standard_sae_loss_decreases():
    x = sparse_data(n=2048)
    kw = dict(architecture="standard", d_sae=48, lr=3e-3, batch_size=128, l1_coefficient=1e-3, progress=False)
    early, late = lens.sae.train(x, "h", steps=2, **kw), lens.sae.train(x, "h", steps=200, **kw)
    assert ev(late, x) > ev(early, x) + 0.2
    torch.testing.assert_close(late.W_dec.norm(dim=1), torch.ones(48), atol=1e-5, rtol=0)


def _params(sae):
    return {n: p.detach().clone() for n, p in sae.named_parameters()}


def _assert_equal(a, b):
    assert a.keys() == b.keys()
    for n in a:
        assert torch.equal(a[n], b[n]), n


@pytest.mark.parametrize("source", ["tensor", "store", "model"])
def test_a_resumed_run_equals_an_uninterrupted_one(source, store, model, tmp_path):
    if source == "tensor":
        src, kw = sparse_data(n=512, d=16), dict(d_sae=32, k=4, batch_size=64)  # 8 batches an epoch: crosses epochs
    elif source == "store":
        src, kw = store, dict(d_sae=64, k=8, batch_size=32)
    else:
        src, kw = DOCS, dict(d_sae=64, k=8, batch_size=32, model=model, context_size=16, buffer_contexts=5)
    kw.update(lr=1e-3, seed=3, dead_after_tokens=64, progress=False)  # dead latents: the aux loss runs too
    straight = lens.sae.train(src, HOOK, steps=14, **kw)
    ckpt = tmp_path / "ckpt"
    lens.sae.train(src, HOOK, steps=7, checkpoint_dir=ckpt, checkpoint_every=3, **kw)
    shutil.rmtree(ckpt / "step-000000007")  # killed after the checkpoint at step 6
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-000000006"]  # the last two are kept
    resumed = lens.sae.train(src, HOOK, steps=14, checkpoint_dir=ckpt, checkpoint_every=3, **kw)
    _assert_equal(_params(straight), _params(resumed))
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-000000012", "step-000000014"]
    # the checkpoint is SAELens's format plus the trainer state; a finished run returns it again
    loaded = lens.sae.load(ckpt / "step-000000014")
    _assert_equal(_params(straight), _params(loaded))
    assert (ckpt / "step-000000014" / STATE_FILE).is_file()
    _assert_equal(_params(straight), _params(lens.sae.train(src, HOOK, steps=14, checkpoint_dir=ckpt, **kw)))


def test_resuming_with_other_arguments_is_refused(tmp_path):
    x = sparse_data(n=256, d=8)
    lens.sae.train(x, "h", d_sae=16, k=2, steps=2, batch_size=32, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"lr=0.0003 \(now 0.001\)"):
        lens.sae.train(x, "h", d_sae=16, k=2, steps=4, batch_size=32, lr=1e-3, checkpoint_dir=tmp_path,
                       progress=False)  # fmt: skip


def test_training_from_a_store(store, tmp_path):
    sae = lens.sae.train(store.folder, HOOK, d_sae=64, k=4, steps=20, batch_size=32, lr=1e-3, progress=False)
    assert sae.d_in == store[HOOK].shape[1] and sae.hook_name == HOOK
    assert all(torch.isfinite(p).all() for p in sae.parameters())
    assert 0 < sae.cfg.metadata["training"]["metrics"]["l0"] <= 4
    sae.save(tmp_path / "sae")
    _assert_equal(_params(sae), _params(lens.sae.load(tmp_path / "sae")))


def test_training_from_a_model_over_text(model):
    sae = lens.sae.train(DOCS, HOOK, d_sae=64, k=4, model=model, context_size=16, steps=10, batch_size=32,
                         progress=False)  # fmt: skip
    assert sae.d_in == model.cfg.d_model
    assert sae.cfg.metadata["training"]["tokens"] == 320


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(hook_name="blocks.1.hook_mlp_out"), "'blocks.1.hook_mlp_out' is not in the store"),
        (dict(d_sae=0), "d_sae=0"),
        (dict(k=65), "k=65 must be at most d_sae=64"),
        (dict(architecture="gated"), "architecture='gated'"),
        (dict(architecture="jumprelu", l0_coefficient=-0.5), "l0_coefficient=-0.5 must be a finite number >= 0"),
        (dict(architecture="jumprelu", jumprelu_bandwidth=0.0), "jumprelu_bandwidth=0.0 must be a finite number > 0"),
        (dict(architecture="jumprelu", jumprelu_init_threshold=-1), "jumprelu_init_threshold=-1"),
        (dict(hook_name_out="blocks.0.hook_mlp_out"), "hook_name_out='blocks.0.hook_mlp_out' is not in the store"),
        (dict(normalize_activations="layer_norm"), "normalize_activations='layer_norm'"),
        (
            dict(normalize_activations="expected_average_only_in", n_batches_for_norm_estimate=0),
            "n_batches_for_norm_estimate=0",
        ),
        (dict(apply_b_dec_to_input="yes"), "apply_b_dec_to_input='yes'"),
        (dict(lr=0.0), "lr=0.0"),
        (dict(lr=-1), "lr=-1"),
        (dict(steps=0), "steps=0"),
        (dict(batch_size=0), "batch_size=0"),
    ],
)
def test_bad_arguments_are_named(store, kw, match):
    args = dict(hook_name=HOOK, d_sae=64, k=4, steps=5, batch_size=32, progress=False) | kw
    with pytest.raises(ValueError, match=match):
        lens.sae.train(store, **args)


def test_bad_model_hook_is_named_before_any_forward(model):
    with pytest.raises(ValueError, match="'blocks.7.hook_resid_post' is not a hook of the model"):
        lens.sae.train(DOCS, "blocks.7.hook_resid_post", d_sae=8, k=2, model=model, progress=False)
