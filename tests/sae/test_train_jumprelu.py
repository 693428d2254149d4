"""JumpReLU training: the straight-through estimators against their rectangle-kernel formulas (and finite
differences where the function is smooth), training that lowers the loss and moves the threshold (up with a strong
L0 penalty, down with a weak one), and the saved SAE: an ordinary ``jumprelu`` SAE that encodes as training did."""

from __future__ import annotations

import pytest
import torch

import lens
import lens.sae
from lens.sae.objectives import forward, jumprelu, step
from lens.sae.train import STATE_FILE
from tests.sae._ref import ref_forward
from tests.sae.test_train import ev, sparse_data

EPS = 0.05


def _points(seed=0, rows=64, d=7):
    """Thresholds in [0.2, 1.2], inputs within 2 bandwidths of them (about half inside the kernel's window), and
    an upstream gradient (float64)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(d, generator=g, dtype=torch.float64) + 0.2
    z = t + (torch.rand(rows, d, generator=g, dtype=torch.float64) * 4 - 2) * EPS
    return z, t, torch.randn(rows, d, generator=g, dtype=torch.float64)


def test_jumprelu_gradients_are_the_rectangle_kernel_expressions():
    z0, t0, g = _points()
    z, t = z0.clone().requires_grad_(), t0.clone().requires_grad_()
    out = jumprelu(z, t, EPS)
    out.backward(g)
    inside = ((z0 - t0).abs() < EPS / 2).double()  # K((z - t) / eps) = 1{|z - t| < eps / 2}
    assert 0 < inside.mean() < 1
    assert torch.equal(out.detach(), torch.where(z0 > t0, z0, torch.zeros_like(z0)))
    torch.testing.assert_close(z.grad, g * (z0 > t0).double(), rtol=0, atol=0)
    torch.testing.assert_close(t.grad, (-(t0 / EPS) * inside * g).sum(0), rtol=1e-12, atol=1e-12)


def test_step_gradients_are_the_rectangle_kernel_expressions():
    z0, t0, g = _points(seed=1)
    z, t = z0.clone().requires_grad_(), t0.clone().requires_grad_()
    out = step(z, t, EPS)
    out.backward(g)
    inside = ((z0 - t0).abs() < EPS / 2).double()
    assert torch.equal(out.detach(), (z0 > t0).double())
    assert z.grad is None or not z.grad.any()  # no gradient reaches the pre-activations through the step
    torch.testing.assert_close(t.grad, (-(1 / EPS) * inside * g).sum(0), rtol=1e-12, atol=1e-12)


def test_step_threshold_gradient_is_the_derivative_of_the_kernel_smoothed_step():
    """The rectangle kernel's pseudo-derivative of H(z - t) in t is the exact derivative of the ramp
    clamp((z - t) / eps + 1/2, 0, 1), which central differences measure (no point lies on a kink)."""
    z0, t0, g = _points(seed=2)
    t = t0.clone().requires_grad_()
    step(z0, t, EPS).backward(g)

    def smoothed(tt):
        return (g * ((z0 - tt) / EPS + 0.5).clamp(0, 1)).sum(0)  # column j depends on t_j only

    h = 1e-7
    numeric = (smoothed(t0 + h) - smoothed(t0 - h)) / (2 * h)
    torch.testing.assert_close(t.grad, numeric, rtol=1e-5, atol=1e-5)


def test_jumprelu_input_gradient_passes_gradcheck_away_from_the_threshold():
    z0, t0, _ = _points(seed=3)
    z0 = torch.where((z0 - t0).abs() < 1e-3, z0 + 2e-3, z0)  # finite differences must not cross the jump
    assert torch.autograd.gradcheck(lambda z: jumprelu(z, t0, EPS), (z0.clone().requires_grad_(),))


def test_the_log_threshold_receives_the_chain_rule_of_the_estimator():
    z0, t0, g = _points(seed=4)
    log_t = t0.log().requires_grad_()
    (jumprelu(z0, log_t.exp(), EPS) * g).sum().backward()
    inside = ((z0 - t0).abs() < EPS / 2).double()
    torch.testing.assert_close(log_t.grad, t0 * (-(t0 / EPS) * inside * g).sum(0), rtol=1e-10, atol=1e-12)


def _train(x, l0_coefficient, steps, **kw):
    return lens.sae.train(x, "h", d_sae=48, architecture="jumprelu", lr=1e-2, batch_size=256, steps=steps,
                          l0_coefficient=l0_coefficient, jumprelu_bandwidth=0.1, jumprelu_init_threshold=0.1,
                          progress=False, **kw)  # fmt: skip


def test_training_reduces_the_loss_and_moves_the_threshold():
    x = sparse_data(n=2048)
    early, strong, weak = _train(x, 0.1, 2), _train(x, 0.1, 400), _train(x, 1e-3, 400)
    m_early, m_strong = early.cfg.metadata["training"]["metrics"], strong.cfg.metadata["training"]["metrics"]
    assert m_strong["loss"] < 0.3 * m_early["loss"]
    assert ev(strong, x) > 0.9 > 0.6 > ev(early, x)
    # the L0 penalty raises the thresholds from 0.1 and sparsifies; a weak one lets them fall
    assert (strong.threshold > 0.15).all() and (weak.threshold < 0.1).all()
    assert m_strong["l0"] < 8 < 20 < weak.cfg.metadata["training"]["metrics"]["l0"]
    torch.testing.assert_close(strong.W_dec.norm(dim=1), torch.ones(48), atol=1e-5, rtol=0)


def test_the_saved_sae_is_an_ordinary_jumprelu_sae_that_encodes_as_training_did(tmp_path):
    x = sparse_data(n=1024)
    sae = _train(x, 0.05, 30, checkpoint_dir=tmp_path, checkpoint_every=10)
    loaded = lens.sae.load(tmp_path / "step-000000030")
    assert loaded.cfg.architecture == "jumprelu" and loaded.cfg.k is None
    for name, p in sae.named_parameters():
        assert torch.equal(p, getattr(loaded, name)), name
    # the threshold is exp(log_threshold) of the trainer state; the training forward's acts equal encode's
    log_threshold = torch.load(tmp_path / "step-000000030" / STATE_FILE, weights_only=False)["log_threshold"]
    assert torch.equal(loaded.threshold.detach(), log_threshold.exp())
    with torch.no_grad():
        acts = forward(loaded, x, log_threshold.exp(), 0.1)[1]
        assert torch.equal(loaded.encode(x), acts) and torch.equal(sae.encode(x), acts)
        assert 0 < (acts > 0).sum(-1).float().mean() < 48
        f_ref, r_ref = ref_forward(dict(loaded.named_parameters()), x, "jumprelu")
        torch.testing.assert_close(acts.double(), f_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loaded.reconstruct(x).double(), r_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["standard", "topk"])
def test_other_architectures_ignore_the_jumprelu_arguments(arch):
    x = sparse_data(n=256, d=8)
    a = lens.sae.train(x, "h", d_sae=16, architecture=arch, k=2, steps=3, batch_size=64, progress=False)
    b = lens.sae.train(x, "h", d_sae=16, architecture=arch, k=2, steps=3, batch_size=64, progress=False,
                       l0_coefficient=7.0, jumprelu_bandwidth=0.3, jumprelu_init_threshold=0.2)  # fmt: skip
    assert "threshold" not in dict(a.named_parameters())
    for name, p in a.named_parameters():
        assert torch.equal(p, getattr(b, name)), name
