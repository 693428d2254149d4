"""lens.sae.evaluate: every metric against an oracle computed here by hand (numpy / plain torch hooks)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lens
import lens.sae
from lens.sae.config import SAEConfig
from lens.sae.modules import SAE

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    return lens.zoo.load("attn-only-2l")


@pytest.fixture(scope="module")
def tokens(model):
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 256, (5, 12), generator=g)
    t[:, 0] = model.tokenizer.bos_token_id
    return t


@pytest.fixture(scope="module")
def acts(model, tokens):
    """The hook's activations, [contexts, pos, d_model], and the mask of the positions the metrics cover."""
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    x = cache[HOOK].double().numpy()
    keep = np.ones(tokens.shape, dtype=bool)
    keep[:, 0] = False
    return x, keep


def _sae(d, d_sae, **params):
    sae = SAE(SAEConfig("standard", d_in=d, d_sae=d_sae, hook_name=HOOK, apply_b_dec_to_input=False))
    with torch.no_grad():
        for n, v in params.items():
            getattr(sae, n).copy_(torch.as_tensor(v, dtype=torch.float32))
    return sae


def _loss_with(model, tokens, values, keep):
    """The model's loss with the hook's activation replaced by ``values`` where ``keep``."""

    def fn(act, hook):
        out = act.clone()
        out[torch.as_tensor(keep)] = torch.as_tensor(values, dtype=act.dtype)[torch.as_tensor(keep)]
        return out

    with torch.no_grad():
        return float(model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(HOOK, fn)]))


def _ev(x, r):
    return 1 - ((x - r) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()


def test_an_exact_sae_explains_everything_and_keeps_the_loss(model, tokens, acts):
    d = model.cfg.d_model
    eye = np.eye(d)
    sae = _sae(d, 2 * d, W_enc=np.concatenate([eye, -eye], 1), W_dec=np.concatenate([eye, -eye], 0))
    m = lens.sae.evaluate(model, sae, tokens, batch_size=2)
    x, keep = acts
    rows = x[keep]
    assert m["tokens"] == keep.sum()
    assert m["explained_variance"] == pytest.approx(1.0, abs=1e-6)
    assert m["mse"] == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        clean = float(model(tokens, return_type="loss"))
    assert m["ce_loss_clean"] == pytest.approx(clean, abs=1e-5)
    assert m["ce_loss_spliced"] == pytest.approx(clean, abs=1e-5)
    assert m["ce_loss_zero"] == pytest.approx(_loss_with(model, tokens, np.zeros_like(x), keep), abs=1e-5)
    assert m["ce_loss_score"] == pytest.approx(1.0, abs=1e-4)
    # latent i fires where x_i > 0, latent d + i where x_i < 0
    fires = np.concatenate([(rows > 0).sum(0), (rows < 0).sum(0)])
    assert m["l0"] == pytest.approx((rows != 0).sum(1).mean())
    assert m["dead_fraction"] == pytest.approx((fires == 0).mean())
    assert m["dense_fraction"] == pytest.approx((fires / len(rows) > 0.1).mean())


def test_a_zero_sae_scores_zero(model, tokens, acts):
    d = model.cfg.d_model
    sae = _sae(d, 16, W_enc=np.zeros((d, 16)), W_dec=np.zeros((16, d)))
    m = lens.sae.evaluate(model, sae, tokens, batch_size=3)
    x, keep = acts
    rows = x[keep]
    assert m["ce_loss_spliced"] == pytest.approx(m["ce_loss_zero"], abs=1e-6)
    assert m["ce_loss_score"] == pytest.approx(0.0, abs=1e-6)
    assert m["explained_variance"] == pytest.approx(_ev(rows, 0 * rows), rel=1e-6)
    assert m["mse"] == pytest.approx((rows**2).mean(), rel=1e-6)
    assert m["l0"] == 0 and m["dead_fraction"] == 1 and m["dense_fraction"] == 0


def test_l0_dead_dense_and_losses_of_a_hand_made_sae(model, tokens, acts):
    d, d_sae = model.cfg.d_model, 24
    g = np.random.default_rng(0)
    w_enc, w_dec = g.normal(size=(d, d_sae)) / math.sqrt(d), g.normal(size=(d_sae, d)) / math.sqrt(d_sae)
    b_enc = g.normal(size=d_sae) * 0.3
    b_enc[:4] = -1e4  # never fire: dead
    b_enc[4:8] = 1e4  # fire everywhere: dense
    b_dec = g.normal(size=d) * 0.1
    sae = _sae(d, d_sae, W_enc=w_enc, W_dec=w_dec, b_enc=b_enc, b_dec=b_dec)
    x, keep = acts
    f = np.maximum(x @ w_enc + b_enc, 0)  # apply_b_dec_to_input=False
    recon = f @ w_dec + b_dec
    rows, fr = x[keep], f[keep]
    fires = (fr > 0).sum(0)
    for exclude_bos in (True, False):
        m = lens.sae.evaluate(model, sae, tokens, batch_size=2, exclude_bos=exclude_bos)
        if exclude_bos:
            assert m["l0"] == pytest.approx((fr > 0).sum(1).mean())
            assert m["dead_fraction"] == pytest.approx((fires == 0).mean())
            assert m["dense_fraction"] == pytest.approx((fires / len(rows) > 0.1).mean())
            assert m["dead_fraction"] >= 4 / d_sae and m["dense_fraction"] >= 4 / d_sae
            assert m["explained_variance"] == pytest.approx(_ev(rows, recon[keep]), rel=1e-4)
            assert m["mse"] == pytest.approx(((rows - recon[keep]) ** 2).mean(), rel=1e-4)
            spliced = _loss_with(model, tokens, recon, keep)
            zero = _loss_with(model, tokens, np.zeros_like(x), keep)
        else:
            every = np.ones_like(keep)
            assert m["tokens"] == every.size
            assert m["l0"] == pytest.approx((f.reshape(-1, d_sae) > 0).sum(1).mean())
            spliced = _loss_with(model, tokens, recon, every)
            zero = _loss_with(model, tokens, np.zeros_like(x), every)
        assert m["ce_loss_spliced"] == pytest.approx(spliced, abs=1e-4)
        assert m["ce_loss_zero"] == pytest.approx(zero, abs=1e-4)
        clean = m["ce_loss_clean"]
        assert m["ce_loss_score"] == pytest.approx((zero - spliced) / (zero - clean), abs=1e-3)


def test_bad_input(model, tokens):
    sae = SAE(SAEConfig("standard", d_in=model.cfg.d_model, d_sae=8, hook_name="blocks.9.hook_resid_post"))
    with pytest.raises(ValueError, match="blocks.9.hook_resid_post"):
        lens.sae.evaluate(model, sae, tokens)
    sae = SAE(SAEConfig("standard", d_in=model.cfg.d_model, d_sae=8, hook_name=HOOK))
    with pytest.raises(ValueError, match="batch_size=0"):
        lens.sae.evaluate(model, sae, tokens, batch_size=0)
    with pytest.raises(ValueError, match="integer ids"):
        lens.sae.evaluate(model, sae, tokens.float())
