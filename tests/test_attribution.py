"""Attribution patching (lens.attribution) against real activation patching on a small trained model."""

import functools

import pytest
import torch

import lens
from lens import attribution, patching
from tests.conftest import tiny_model

VOCAB, PERIOD, N_PROMPTS, K = 24, 8, 8, 5  # tokens 0..23, BOS = 24; sequences [BOS] + r + r


@functools.lru_cache(maxsize=1)
def train_induction_model() -> lens.HookedTransformer:
    """A 2-layer attention-only model trained (seeded, ~100 Adam steps) to continue repeated random
    sequences: it learns to copy the token that followed the current one a period earlier."""
    cfg = lens.TransformerConfig(
        n_layers=2,
        d_model=32,
        n_heads=4,
        d_vocab=VOCAB + 1,
        n_ctx=2 * PERIOD + 1,
        attn_only=True,
        model_name="induction",
    )
    model = lens.HookedTransformer(cfg, seed=0)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is several times faster on a shared 2-core box
    try:
        for _ in range(100):
            r = torch.randint(0, VOCAB, (32, PERIOD), generator=gen)
            tokens = torch.cat([torch.full((32, 1), VOCAB), r, r], dim=1)
            loss = model(tokens, return_type="loss", loss_per_token=True)[:, PERIOD:].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 0.1, f"training did not converge (loss {loss.item():.3f})"
    return model.eval()


def induction_prompts():
    """Clean: [BOS] r r[:K] (next token r[K]); corrupted: r[K] swapped in the first copy."""
    gen = torch.Generator().manual_seed(1)
    r = torch.randint(0, VOCAB, (N_PROMPTS, PERIOD), generator=gen)
    clean = torch.cat([torch.full((N_PROMPTS, 1), VOCAB), r, r[:, :K]], dim=1)
    corrupted = clean.clone()
    wrong = (r[:, K] + 1 + torch.randint(0, VOCAB - 1, (N_PROMPTS,), generator=gen)) % VOCAB
    corrupted[:, 1 + K] = wrong
    answer = r[:, K]

    def logit_diff(logits):  # per-row metric: works for any number of rows (runs x prompts)
        reps = logits.shape[0] // N_PROMPTS
        last = logits[:, -1]
        return last.gather(-1, answer.repeat(reps)[:, None])[:, 0] - last.gather(-1, wrong.repeat(reps)[:, None])[:, 0]

    return clean, corrupted, logit_diff


@pytest.fixture(scope="module")
def trained():
    model = train_induction_model()
    clean, corrupted, metric = induction_prompts()
    _, clean_cache = model.run_with_cache(clean)
    return model, clean, corrupted, clean_cache, metric


def _pearson(a, b):
    return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()


def test_metric_is_meaningful(trained):
    model, clean, corrupted, _, metric = trained
    with torch.no_grad():
        assert metric(model(clean)).mean() > 3 and metric(model(corrupted)).mean() < -3


def test_attribution_correlates_with_activation_patching(trained):
    model, _, corrupted, clean_cache, metric = trained
    act = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, metric)
    attr = attribution.get_attr_patch_resid_pre(model, corrupted, clean_cache, metric, labelled=True)
    assert attr.values.shape == act.shape == (2, 1 + PERIOD + K)
    assert _pearson(act, attr.values) > 0.8
    # The biggest sites agree: the swapped token (layer 0) and the final position (layer 1).
    assert (
        act.flatten().topk(2).indices.sort().values.tolist()
        == attr.values.flatten().topk(2).indices.sort().values.tolist()
    )
    heads_act = patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, metric)
    heads_attr = attribution.get_attr_patch_attn_head_out_all_pos(model, corrupted, clean_cache, metric)
    assert _pearson(heads_act, heads_attr) > 0.8


def test_attribution_is_exact_for_linear_sites():
    """The logits are linear in ln_final's output, so there the first-order estimate is exact."""
    model = tiny_model("llama")
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 97, (2, 5), generator=gen)
    corrupted = torch.randint(0, 97, (2, 5), generator=gen)
    _, clean_cache = model.run_with_cache(clean)

    def metric(logits):
        return logits[:, -1, 3] - logits[:, -1, 4]

    args = (model, corrupted, clean_cache, metric, ["ln_final.hook_normalized"], ("layer", "pos"))
    act = patching.generic_activation_patch(*args)
    attr = attribution.generic_attribution_patch(*args)
    torch.testing.assert_close(attr.baseline + attr.values, act.values, atol=1e-4, rtol=1e-4)
    assert attr.baseline == pytest.approx(act.baseline, abs=1e-5)
    assert all(p.grad is None for p in model.parameters())  # no parameter gradients left behind


def test_helpers_shapes_and_frozen_parameters():
    model = tiny_model("llama")  # GQA
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    clean, corrupted = torch.randint(0, 97, (2, 2, 5), generator=gen)
    _, clean_cache = model.run_with_cache(clean)

    def metric(logits):
        return (logits[:, -1, 3] - logits[:, -1, 4]).mean()  # a single-run (0-d) metric

    for key in ("resid_mid", "attn_head_k_by_pos", "attn_head_pattern_by_pos", "mlp_post_all_pos"):
        a = getattr(attribution, f"get_attr_patch_{key}")(model, corrupted, clean_cache, metric)
        b = getattr(patching, f"get_act_patch_{key}")(model, corrupted, clean_cache, metric)
        assert a.shape == b.shape and torch.isfinite(a).all()
    every = attribution.get_attr_patch_attn_head_all_pos_every(model, corrupted, clean_cache, metric)
    assert every.shape == (5, 2, 4) and torch.isnan(every[2:4, :, 2:]).all()
    assert attribution.get_attr_patch_block_every(model, corrupted, clean_cache, metric).shape == (3, 2, 5)
    assert attribution.get_attr_patch_attn_head_by_pos_every(model, corrupted, clean_cache, metric).shape == (
        5,
        2,
        5,
        4,
    )
    res = attribution.get_attr_patch_attn_out(model, corrupted, clean_cache, metric, labelled=True)
    assert res.kind == "attribution patching" and res.figure().data[0].z is not None


def test_bad_input():
    model = tiny_model("gpt2")
    tokens = torch.randint(0, 97, (1, 4), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(tokens)
    with pytest.raises(ValueError, match="not differentiable"):
        attribution.get_attr_patch_resid_pre(model, tokens, cache, lambda lg: (lg.argmax(-1) == 3).float().sum(-1))
    with pytest.raises(ValueError, match="same number of positions"):
        attribution.get_attr_patch_resid_pre(model, tokens[:, :3], cache, lambda lg: lg[:, -1, 0])
    with pytest.raises(ValueError, match="returned shape"):
        attribution.get_attr_patch_resid_pre(model, tokens, cache, lambda lg: lg[:, -1])
    with pytest.raises(ValueError, match="unknown hook name"):
        attribution.generic_attribution_patch(model, tokens, cache, lambda lg: lg[:, -1, 0], "blocks.9.hook_z")
