"""lens.sae.features against oracles computed here: a brute-force top-k over every activation
(``run_with_cache`` + ``sae.encode`` on the whole corpus at once, ranked in Python), counts, histograms and
``W_dec @ W_U`` by hand; token / text / store sources agree; memory does not grow with the corpus."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import lens.sae
import lens.store
from lens.sae import features as F
from lens.sae.config import SAEConfig
from lens.sae.modules import SAE
from lens.store import TokenSource
from lens.tokenizer import Tokenizer
from tests.sae._ref import random_params, set_params
from tests.tiny import tiny_model

HOOK = "blocks.0.hook_resid_post"
D, D_SAE, BOS = 16, 48, 256
ROOT = Path(__file__).resolve().parents[2]


def _model(dtype=torch.float64):
    model = tiny_model("gpt2", d_vocab=259, d_model=D, n_heads=2, dtype=dtype)
    model.set_tokenizer(Tokenizer.byte_level())
    return model


@pytest.fixture(scope="module")
def model():
    return _model()


def make_sae(arch: str, seed: int = 0, dtype: str = "float64", hook: str = HOOK) -> SAE:
    cfg = SAEConfig(arch, d_in=D, d_sae=D_SAE, hook_name=hook, k=4 if arch == "topk" else None, dtype=dtype)
    sae = set_params(SAE(cfg), random_params(D, D_SAE, jumprelu=arch == "jumprelu", seed=seed))
    with torch.no_grad():
        sae.b_enc[:4] = -100.0  # dead features
    return sae


@pytest.fixture(scope="module")
def tokens():
    t = torch.randint(0, 256, (12, 10), generator=torch.Generator().manual_seed(1))
    t[:, 0] = BOS
    t[3, 0] = 65  # a context that does not start with BOS keeps its position 0
    return t


def brute(model, sae, tokens, k, window=(8, 4), exclude_bos=True):
    """Every activation of the corpus at once, each feature's firing tokens ranked by (-value, context, pos)."""
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
        acts = sae.encode(cache[HOOK]).double()
    b, p, d = acts.shape
    keep = torch.ones(b, p, dtype=torch.bool)
    if exclude_bos:
        keep[:, 0] = tokens[:, 0] != BOS
    out = {"fires": [], "max": [], "top": [], "acts": acts, "total": int(keep.sum())}
    for f in range(d):
        hits = [(acts[i, j, f].item(), i, j) for i in range(b) for j in range(p) if keep[i, j] and acts[i, j, f] > 0]
        out["fires"].append(len(hits))
        out["max"].append(max([acts[i, j, f].item() for i in range(b) for j in range(p) if keep[i, j]], default=0))
        ranked = sorted(hits, key=lambda h: (-h[0], h[1], h[2]))[:k]
        before, after = window
        out["top"].append([
            (v, i, j, [int(tokens[i, q]) if 0 <= q < p else -1 for q in range(j - before, j + after + 1)],
             [acts[i, q, f].item() if 0 <= q < p else math.nan for q in range(j - before, j + after + 1)])
            for v, i, j in ranked
        ])  # fmt: skip
    return out


def assert_matches(top, ref, features=None, windows=True):
    features = list(range(D_SAE)) if features is None else features
    assert top.features.tolist() == features
    assert top.fires.tolist() == ref["fires"]
    assert top.total_tokens == ref["total"]
    np.testing.assert_allclose(top.max_activation.double().numpy(), ref["max"], rtol=1e-9, atol=1e-12)
    for row, f in enumerate(features):
        want = ref["top"][f]
        n = len(want)
        assert int(top.counts[row]) == n
        assert top.contexts[row, :n].tolist() == [w[1] for w in want], f"feature {f}"
        assert top.positions[row, :n].tolist() == [w[2] for w in want], f"feature {f}"
        np.testing.assert_allclose(top.values[row, :n].double().numpy(), [w[0] for w in want], rtol=1e-9)
        assert torch.isnan(top.values[row, n:]).all() and (top.contexts[row, n:] == -1).all()
        if windows and n:
            assert top.windows[row, :n].tolist() == [w[3] for w in want]
            np.testing.assert_allclose(top.window_acts[row, :n].double().numpy(), [w[4] for w in want], rtol=1e-9)


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_streaming_top_k_equals_brute_force_for_every_batch_size(model, tokens, arch):
    sae = make_sae(arch)
    ref = brute(model, sae, tokens, k=5)
    assert any(0 < len(t) < 5 for t in ref["top"]) or arch == "standard"  # some features fill fewer slots
    for batch_size in (1, 3, 5, 12):
        top = F.top_activations(model, sae, tokens, k=5, batch_size=batch_size)
        assert_matches(top, ref)
    subset = [40, 7, 3, 21]  # any order, dead feature 3 included
    assert_matches(F.top_activations(model, sae, tokens, features=subset, k=5, batch_size=4), ref, subset)


def test_equal_activations_rank_in_context_then_position_order(model, tokens):
    sae = make_sae("standard")
    with torch.no_grad():
        sae.W_enc[:, 5] = 0.0
        sae.b_enc[5] = 0.5  # fires 0.5 on every token: all tie
    ref = brute(model, sae, tokens, k=7)
    first = [(i, j) for i in range(12) for j in range(10) if not (j == 0 and tokens[i, 0] == BOS)][:7]
    assert [(t[1], t[2]) for t in ref["top"][5]] == first
    for batch_size in (1, 2, 7):
        top = F.top_activations(model, sae, tokens, features=[5], k=7, batch_size=batch_size)
        assert list(zip(top.contexts[0].tolist(), top.positions[0].tolist(), strict=True)) == first
        assert top.values[0].tolist() == [0.5] * 7


def test_bos_included_on_request(model, tokens):
    sae = make_sae("topk")
    ref = brute(model, sae, tokens, k=4, window=(2, 1), exclude_bos=False)
    top = F.top_activations(model, sae, tokens, k=4, context_window=(2, 1), exclude_bos=False, batch_size=5)
    assert top.total_tokens == tokens.numel()
    assert_matches(top, ref)
    excluded = F.top_activations(model, sae, tokens, k=4, batch_size=5)
    assert excluded.total_tokens == tokens.numel() - 11  # 11 of the 12 contexts start with BOS


def test_density_counts_and_histogram_equal_brute_counts(model, tokens):
    sae = make_sae("jumprelu", seed=3)
    ref = brute(model, sae, tokens, k=1)
    top = F.top_activations(model, sae, tokens, k=3, batch_size=4)
    want = torch.tensor(ref["fires"], dtype=torch.float64) / ref["total"]
    assert torch.equal(top.density, want)
    assert torch.equal(F.feature_density(top), want)
    assert torch.equal(F.feature_density(model, sae, tokens, batch_size=5), want)
    assert (want[:4] == 0).all() and (want[4:] > 0).any()
    acts, keep = ref["acts"], torch.ones(tokens.shape, dtype=torch.bool)
    keep[:, 0] = tokens[:, 0] != BOS
    lo, hi = F.HIST_LOG10
    for f in range(D_SAE):
        values = acts[..., f][keep & (acts[..., f] > 0)].numpy()
        bins = np.clip(np.floor((np.log10(values) - lo) / ((hi - lo) / F.HIST_BINS)), 0, F.HIST_BINS - 1)
        expected = np.bincount(bins.astype(int), minlength=F.HIST_BINS)
        assert top.hist[f].tolist() == expected.tolist(), f"feature {f}"
        assert int(top.hist[f].sum()) == ref["fires"][f]


def test_text_and_token_file_sources_equal_the_token_tensor_of_their_contexts(model, tmp_path):
    sae = make_sae("standard", seed=1)
    texts = [f"def f{i}(x):\n    return x * {i} + 'é'\n" for i in range(30)]
    src = TokenSource.from_any(texts, model.tokenizer, context_size=16, prepend_bos=True)
    tokens = torch.from_numpy(np.stack([ids for _, ids in src.contexts()]))
    want = F.top_activations(model, sae, tokens, k=6, batch_size=4)
    got = F.top_activations(model, sae, texts, k=6, batch_size=3, context_size=16)
    for name in ("values", "contexts", "positions", "windows", "window_acts", "fires", "hist"):
        assert torch.equal(getattr(got, name).nan_to_num(-7), getattr(want, name).nan_to_num(-7)), name
    np.save(tmp_path / "ids.npy", tokens[:, 1:].reshape(-1).numpy())  # the same ids as a token file
    from_file = F.top_activations(model, sae, str(tmp_path / "ids.npy"), k=6, context_size=16)
    assert torch.equal(from_file.contexts, want.contexts) and torch.equal(from_file.windows, want.windows)


def test_store_source_equals_token_source(model, tmp_path):
    sae = make_sae("topk", seed=2)
    texts = [f"store text {i}: <b>{'x' * (i % 5)}</b>\n" for i in range(40)]
    src = TokenSource.from_any(texts, model.tokenizer, context_size=16, prepend_bos=True)
    tokens = torch.from_numpy(np.stack([ids for _, ids in src.contexts()]))
    want = F.top_activations(model, sae, tokens, k=5, batch_size=4)
    names = ("values", "contexts", "positions", "fires", "hist", "total_tokens")

    def same(got, with_windows=True):
        for name in names + (("windows", "window_acts") if with_windows else ()):
            a, b = getattr(got, name), getattr(want, name)
            if isinstance(a, torch.Tensor):
                np.testing.assert_allclose(a.double().numpy(), b.double().numpy(), rtol=1e-12, err_msg=name)
            else:
                assert a == b, name

    common = dict(hooks=[HOOK], context_size=16, batch_size=4, progress=False)
    full = lens.store.open(lens.store.harvest(model, texts, out_dir=tmp_path / "full", exclude_bos=False, **common))
    same(F.top_activations(model, sae, full, k=5, batch_size=3))
    shuffled = lens.store.harvest(model, texts, out_dir=tmp_path / "shuf", exclude_bos=False, shuffle_seed=3, **common)
    same(F.top_activations(model, sae, lens.store.open(shuffled), k=5, batch_size=2))  # context numbers, not order
    no_bos = lens.store.open(lens.store.harvest(model, texts, out_dir=tmp_path / "nobos", **common))
    got = F.top_activations(model, sae, no_bos, k=5, batch_size=3)
    same(got, with_windows=False)
    # the harvest kept no BOS row: those window slots are -1, every other token is the same
    slot_pos = got.positions[..., None] + torch.arange(-8, 5)
    filled = got.contexts[..., None] >= 0
    assert torch.equal(got.windows[filled.expand_as(slot_pos) & (slot_pos == 0)].unique(), torch.tensor([-1]))
    other = filled.expand_as(slot_pos) & (slot_pos != 0)
    assert torch.equal(got.windows[other], want.windows[other])


def test_logit_effects_equal_w_dec_times_w_u_by_hand(model):
    sae = make_sae("standard", seed=4)
    w_dec, w_u = sae.W_dec.detach().double().numpy(), model.W_U.detach().double().numpy()
    for f in (0, 13, 47):
        hand = np.array([sum(w_dec[f, i] * w_u[i, t] for i in range(D)) for t in range(w_u.shape[1])])
        e = F.logit_effects(model, sae, f, k=6)
        order = np.argsort(-hand, kind="stable")
        assert e.feature == f
        assert e.top_tokens.tolist() == order[:6].tolist()
        assert e.bottom_tokens.tolist() == order[::-1][:6].tolist()
        np.testing.assert_allclose(e.top_values.numpy(), hand[order[:6]], rtol=1e-10)
        np.testing.assert_allclose(e.bottom_values.numpy(), hand[order[::-1][:6]], rtol=1e-10)
        assert e.top_strings == F.token_strings(model, order[:6].tolist())
    many = F.logit_effects(model, sae, [47, 0], k=3)
    assert [m.feature for m in many] == [47, 0]
    assert many[1].top_tokens.tolist() == F.logit_effects(model, sae, 0, k=3).top_tokens.tolist()
    # a transcoder: the direction it writes at hook_name_out
    cfg = SAEConfig("standard", d_in=D, d_sae=8, hook_name="blocks.0.ln2.hook_normalized",
                    hook_name_out="blocks.0.hook_mlp_out", dtype="float64")  # fmt: skip
    tc = SAE(cfg, seed=5)
    e = F.logit_effects(model, tc, 2, k=4)
    hand = tc.W_dec[2].detach().double() @ model.W_U.detach().double()
    assert e.top_tokens.tolist() == hand.topk(4).indices.tolist()


def test_byte_tokens_render_readably(model):
    assert F.token_strings(model, [256, 104, 0xC3, 0xA9, 32, 10]) == ["<|bos|>", "h", "<0xC3>", "<0xA9>", " ", "\n"]
    assert F.visible(" a\n\tb\r\x00\x7f") == "·a↵⇥b␍\u2400\u2421"
    bare = tiny_model("gpt2", d_vocab=259, d_model=D, n_heads=2)
    assert F.token_strings(bare, [5]) == ["#5"]


def test_figures_show_the_numbers(model, tokens):
    sae = make_sae("standard")
    top = F.top_activations(model, sae, tokens, k=3)
    fig = F.density_histogram(top, bins=10)
    alive = top.density[top.density > 0].numpy()
    counts, _ = np.histogram(np.log10(alive), bins=10)
    assert list(fig.data[0].y) == counts.tolist()
    dead = int((top.fires == 0).sum())
    assert dead >= 4 and f"{dead} dead" in fig.layout.title.text
    e = F.logit_effects(model, sae, 9, k=5)
    fig = F.logit_effects_figure(e)
    np.testing.assert_allclose(fig.data[0].x, e.top_values.numpy())
    np.testing.assert_allclose(fig.data[1].x, e.bottom_values.numpy())
    assert len(fig.data[0].y) == 5
    fig = F.activation_histogram(top, 9)
    assert sum(fig.data[0].y) == int(top.fires[9]) == int(top.hist[9].sum())


def test_result_holds_o_features_times_k_whatever_the_corpus(model):
    sae = make_sae("topk")
    small = torch.randint(0, 256, (4, 10), generator=torch.Generator().manual_seed(0))
    big = torch.randint(0, 256, (40, 10), generator=torch.Generator().manual_seed(0))

    def nbytes(top):
        return sum(v.numel() * v.element_size() for v in vars(top).values() if isinstance(v, torch.Tensor))

    a, b = (F.top_activations(model, sae, t, k=5, context_window=(3, 2)) for t in (small, big))
    assert nbytes(a) == nbytes(b)
    assert a.windows.shape == (D_SAE, 5, 6) and a.values.shape == (D_SAE, 5)


_PEAK = """
import json, resource, sys, tracemalloc
import torch
sys.path.insert(0, {root!r})
from lens.sae import features as F
from lens.sae.config import SAEConfig
from lens.sae.modules import SAE
from tests.tiny import tiny_model
model = tiny_model("gpt2", d_vocab=259, d_model=16, n_heads=2, n_layers=1)
sae = SAE(SAEConfig("standard", d_in=16, d_sae=64, hook_name="blocks.0.hook_resid_post"))
tokens = torch.randint(0, 256, ({contexts}, 64), generator=torch.Generator().manual_seed(0))
F.top_activations(model, sae, tokens[:64], k=8, batch_size=32)  # warm up the allocator and kernels
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
top = F.top_activations(model, sae, tokens, k=8, batch_size=32)
python_peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"rss_kb": after - before, "python_peak": python_peak, "tokens": top.total_tokens}}))
"""


def _peak(contexts: int) -> dict:
    code = textwrap.dedent(_PEAK.format(root=str(ROOT), contexts=contexts))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_the_corpus():
    """10x the tokens: the process's peak RSS and Python's traced peak stay put, while keeping every
    activation would cost 10x (200k tokens x 64 features x 4 bytes = 51 MB at 10x)."""
    small, big = _peak(320), _peak(3200)
    all_acts = big["tokens"] * 64 * 4
    assert big["tokens"] == 10 * small["tokens"]
    assert big["rss_kb"] * 1024 < small["rss_kb"] * 1024 + 0.15 * all_acts, (small, big)
    assert big["python_peak"] < 2 * small["python_peak"] + (1 << 20), (small, big)


def test_bad_input_raises_before_any_forward(model, tokens, tmp_path):
    sae = make_sae("standard")
    calls = []

    def count(act, hook):
        calls.append(hook.name)

    cases = [
        (dict(features=[3, 48]), ValueError, r"\[48\].*d_sae=48"),
        (dict(features=[-1]), ValueError, r"\[-1\].*d_sae=48"),
        (dict(features=[2, 2]), ValueError, "twice"),
        (dict(features=[1.5]), TypeError, "int feature ids"),
        (dict(k=0), ValueError, "k=0"),
        (dict(batch_size=0), ValueError, "batch_size=0"),
        (dict(context_window=(2, -1)), ValueError, r"context_window=\(2, -1\)"),
    ]
    with model.hooks(fwd_hooks=[("hook_embed", count)]):
        for kwargs, error, match in cases:
            with pytest.raises(error, match=match):
                F.top_activations(model, sae, tokens, **kwargs)
        with pytest.raises(ValueError, match="blocks.5.hook_resid_post"):
            F.top_activations(model, make_sae("standard", hook="blocks.5.hook_resid_post"), tokens)
        with pytest.raises(ValueError, match="width 16 at 'blocks.0.mlp.hook_post'"):
            F.top_activations(model, make_sae("standard", hook="blocks.0.mlp.hook_post"), tokens)
        with pytest.raises(TypeError, match="integer tensor"):
            F.top_activations(model, sae, tokens.float())
        with pytest.raises(ValueError, match="context_size=999"):
            F.top_activations(model, sae, ["text"], context_size=999)
        with pytest.raises(ValueError, match=r"\[48\].*d_sae=48"):
            F.logit_effects(model, sae, 48)
        with pytest.raises(ValueError, match="k=0"):
            F.logit_effects(model, sae, 1, k=0)
        with pytest.raises(ValueError, match="blocks.5"):
            F.logit_effects(model, make_sae("standard", hook="blocks.5.hook_resid_post"), 1)
        with pytest.raises(ValueError, match="feature_density needs"):
            F.feature_density(model, sae)
    assert calls == []
    folder = lens.store.harvest(model, tokens[:, 1:].reshape(-1), hooks=["blocks.1.hook_resid_post"],
                                context_size=10, batch_size=4, out_dir=tmp_path, progress=False)  # fmt: skip
    store = lens.store.open(folder)
    with pytest.raises(ValueError, match=r"'blocks.0.hook_resid_post' is not in the store.*blocks.1.hook_resid_post"):
        F.top_activations(model, sae, store)


def test_exported_from_the_package():
    for name in ("top_activations", "feature_density", "logit_effects", "feature_browser", "TopActivations"):
        assert hasattr(lens.sae, name), name
