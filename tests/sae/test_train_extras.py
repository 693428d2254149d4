"""lens.sae.train beyond the plain SAE: transcoders (read at one hook, trained to write another), SAELens's
activation normalisation, the geometric-median decoder-bias init, corrupted checkpoints (named, set aside, the
previous one used) and a run killed with SIGKILL that resumes to the bits of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import lens
import lens.sae
from lens.sae import objectives
from lens.sae.train import WEIGHTS_FILE, CorruptCheckpointError

ROOT = Path(__file__).resolve().parents[2]


def paired(n=4096, d_in=24, d_out=12, m=40, s=3, seed=0):
    """x and y built from the same sparse codes through two dictionaries: a transcoder's ideal job."""
    g = torch.Generator().manual_seed(seed)
    d1, d2 = torch.randn(m, d_in, generator=g), torch.randn(m, d_out, generator=g)
    d1, d2 = d1 / d1.norm(dim=1, keepdim=True), d2 / d2.norm(dim=1, keepdim=True)
    codes = torch.zeros(n, m)
    idx = torch.stack([torch.randperm(m, generator=g)[:s] for _ in range(n)])
    codes.scatter_(1, idx, torch.rand(n, s, generator=g) * 2 + 0.5)
    return codes @ d1, codes @ d2


def ev(pred, y):
    return float(1 - (pred - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


def test_transcoder_learns_the_map_between_two_hooks():
    x, y = paired()
    kw = dict(d_sae=40, k=3, lr=1e-2, batch_size=256, hook_name_out="out", dead_after_tokens=2000, progress=False)
    early, tc = lens.sae.train((x, y), "in", steps=3, **kw), lens.sae.train((x, y), "in", steps=600, **kw)
    with torch.no_grad():
        assert ev(tc.decode(tc.encode(x)), y) > 0.85 > ev(early.decode(early.encode(x)), y)
    assert (tc.d_in, tc.d_out, tc.hook_name, tc.cfg.hook_name_out) == (24, 12, "in", "out")
    assert tc.cfg.apply_b_dec_to_input is False  # widths differ: the decoder bias lives in the output space


def test_transcoder_from_a_model_over_text_attaches_at_its_two_hooks(tmp_path):
    model = lens.zoo.load("gelu-4l")
    docs = [f"def f{i}(x):\n    return x * {i} + {i % 3}\n" * 4 for i in range(16)]
    hook_in, hook_out = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"
    tc = lens.sae.train(docs, hook_in, 128, "topk", 16, model=model, hook_name_out=hook_out, context_size=32,
                        steps=60, batch_size=64, lr=3e-3, progress=False)  # fmt: skip
    toks = model.to_tokens(docs[3])[:, :32]
    _, cache = model.run_with_cache(toks, names_filter=[hook_in, hook_out])
    with torch.no_grad():
        pred = tc.decode(tc.encode(cache[hook_in][0]))
    assert ev(pred, cache[hook_out][0]) > 0.3  # it learned the MLP's map, not the identity
    tc.save(tmp_path / "tc")
    back = lens.sae.load(tmp_path / "tc")
    with model.saes([back]):
        _, spliced = model.run_with_cache(toks, names_filter=lambda n: n.startswith(hook_in) or n == hook_out)
    torch.testing.assert_close(spliced[f"{hook_in}.hook_sae_output"][0], pred, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(spliced[hook_out][0], pred, atol=1e-5, rtol=1e-5)  # the transcoder wrote the output


def test_normalisation_makes_training_invariant_to_the_activation_scale(tmp_path):
    x, _ = paired(n=1024, d_in=16)
    kw = dict(d_sae=32, k=4, steps=20, batch_size=128, lr=3e-3, normalize_activations="expected_average_only_in",
              n_batches_for_norm_estimate=4, progress=False)  # fmt: skip
    a = lens.sae.train(x, "h", **kw)
    b = lens.sae.train(x * 10, "h", checkpoint_dir=tmp_path / "ckpt", **kw)
    sa, sb = (s.cfg.metadata["training"]["norm_scaling_factor"] for s in (a, b))
    expected = 16**0.5 / x[:512].norm(dim=-1).mean().item()  # the first 4 batches of 128 rows: a permutation of ...
    assert sa == pytest.approx(10 * sb, rel=1e-6) and 0.3 * expected < sa < 3 * expected
    # the returned SAEs have the factor folded in: they reconstruct raw activations, scaled alike
    assert a.cfg.normalize_activations == "none" == b.cfg.normalize_activations
    with torch.no_grad():
        torch.testing.assert_close(b.reconstruct(x * 10), 10 * a.reconstruct(x), atol=1e-3, rtol=1e-3)
        # the checkpoint keeps SAELens's form (scaled weights + the factor in cfg.json); loading applies it
        ckpt = lens.sae.load(tmp_path / "ckpt" / "step-000000020")
        assert ckpt.cfg.normalize_activations == "expected_average_only_in"
        assert ckpt.norm_scaling_factor == pytest.approx(sb)
        torch.testing.assert_close(ckpt.reconstruct(x * 10), b.reconstruct(x * 10), atol=1e-4, rtol=1e-4)


def test_geometric_median_minimises_the_summed_distance():
    g = torch.Generator().manual_seed(1)
    x = torch.cat((torch.randn(200, 5, generator=g), 50 + torch.randn(20, 5, generator=g)))  # outliers
    med = objectives.geometric_median(x, iters=200)

    def cost(c):
        return (x.double() - c.double()).norm(dim=-1).sum().item()

    assert cost(med) <= cost(x.mean(0))
    for _ in range(20):
        assert cost(med) <= cost(med + 0.05 * torch.randn(5, generator=g)) + 1e-6
    assert med.norm() < x.mean(0).norm() / 3  # robust: the outliers barely move it


def _flip_a_byte(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))


def test_a_corrupted_checkpoint_is_named_set_aside_and_the_previous_one_used(tmp_path):
    x, _ = paired(n=512, d_in=8)
    kw = dict(d_sae=16, k=2, batch_size=64, seed=2, checkpoint_every=2, keep_checkpoints=3, progress=False)
    straight = lens.sae.train(x, "h", steps=10, **kw)
    ckpt = tmp_path / "ckpt"
    lens.sae.train(x, "h", steps=6, checkpoint_dir=ckpt, **kw)
    bad = ckpt / "step-000000006" / WEIGHTS_FILE
    _flip_a_byte(bad)
    with pytest.warns(RuntimeWarning, match=r"step-000000006.*sae_weights.safetensors.*step-000000004"):
        resumed = lens.sae.train(x, "h", steps=10, checkpoint_dir=ckpt, **kw)
    for n, p in straight.named_parameters():
        assert torch.equal(p, dict(resumed.named_parameters())[n]), n
    assert (ckpt / "step-000000006.corrupt").is_dir()
    # nothing intact: a clear error naming the files, no silent fresh start over the user's checkpoints
    only = tmp_path / "only"
    lens.sae.train(x, "h", steps=2, checkpoint_dir=only, **kw)
    (only / "step-000000002" / "trainer_state.pt").write_bytes(b"\0" * 100)
    with pytest.raises(CorruptCheckpointError, match=r"step-000000002.*trainer_state.pt"):
        lens.sae.train(x, "h", steps=4, checkpoint_dir=only, **kw)


SCRIPT = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    import lens.sae
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 64, generator=g) @ torch.randn(64, 64, generator=g)
    ckpt = None if sys.argv[2] == "-" else sys.argv[2]
    sae = lens.sae.train(x, "h", d_sae=512, k=8, steps=40, batch_size=1024, checkpoint_dir=ckpt, checkpoint_every=1,
                         dead_after_tokens=4096, progress=False)
    params = {n: p.detach() for n, p in sae.named_parameters()}
    torch.save({"params": params, "resumed_from": sae.cfg.metadata["training"]["resumed_from"]}, sys.argv[1])
    """
)


def _run(out: Path, ckpt: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(out), ckpt], env=env, cwd=ROOT)


def test_a_run_killed_with_sigkill_resumes_to_the_bits_of_an_uninterrupted_one(tmp_path):
    ckpt = tmp_path / "ckpt"
    proc = _run(tmp_path / "killed.pt", str(ckpt))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len([p for p in ckpt.glob("step-*") if p.is_dir()]) >= 2:  # mid-run, after a few checkpoints
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.fail(f"the run finished (rc {proc.returncode}) before it could be killed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = sorted(p.name for p in ckpt.glob("step-*"))[-1:]
    assert proc.returncode == -signal.SIGKILL and not (tmp_path / "killed.pt").exists()
    for p in (_run(tmp_path / "resumed.pt", str(ckpt)), _run(tmp_path / "straight.pt", "-")):
        assert p.wait(timeout=300) == 0
    resumed, straight = torch.load(tmp_path / "resumed.pt"), torch.load(tmp_path / "straight.pt")
    assert straight["resumed_from"] is None
    assert Path(resumed["resumed_from"]).name in killed_at  # it went on from the killed run's newest checkpoint
    resumed, straight = resumed["params"], straight["params"]
    for n in straight:
        assert torch.equal(resumed[n], straight[n]), n
    left = sorted(p.name for p in ckpt.iterdir())
    assert left == ["step-000000039", "step-000000040"], left  # no temporaries, no half-written folders
