"""Embedded models: shipped weights load offline, match their recorded hashes and reports, and behave."""

from __future__ import annotations

import shutil

import pytest
import torch

from lens import zoo
from lens.zoo import train as zoo_train


def test_both_models_ship_with_reports():
    assert set(zoo.list_models()) >= {"attn-only-2l", "gelu-4l"}
    total = sum((zoo.WEIGHTS_DIR / f"{n}.safetensors").stat().st_size for n in zoo.list_models())
    assert total <= 10 * 2**20, "embedded weights must stay under 10 MB"
    for name in zoo.list_models():
        report = zoo.info(name)
        assert report["sha256"] == zoo.sha256_of(zoo.WEIGHTS_DIR / f"{name}.safetensors")
        assert report["held_out_loss"] < 3.0, "trained models beat a byte-unigram baseline by far"
        assert len(report["loss_curve"]) > 5 and report["loss_curve"][-1][1] < report["loss_curve"][0][1]


@pytest.mark.parametrize("name", ["attn-only-2l", "gelu-4l"])
def test_load_reproduces_recorded_metrics(name):
    model = zoo.load(name)
    report = zoo.info(name)
    assert model.cfg.to_dict() == {**report["config"], "device": None}
    recomputed = zoo_train.induction_scores(model)
    torch.testing.assert_close(torch.tensor(recomputed), torch.tensor(report["induction_scores"]), atol=1e-3, rtol=0)


def test_trained_models_predict_python_source():
    """Both models beat a byte-unigram baseline on held-out standard-library text by a wide margin."""
    import numpy as np

    _, held, _ = zoo_train.load_corpus()
    counts = np.bincount(held, minlength=259).astype(float)
    p = counts / counts.sum()
    unigram = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    for name in ("attn-only-2l", "gelu-4l"):
        model = zoo.load(name)
        loss = zoo_train.held_out_loss(model, held, seq=128, n_batches=2, batch=8)
        assert loss < unigram - 1.0, f"{name}: held-out {loss:.2f} vs unigram {unigram:.2f}"


def test_copy_augmentation_writes_each_span_twice():
    import numpy as np

    data = np.full(10_000, 7, dtype=np.int64)  # a non-printable byte: spans stand out
    tokens = zoo_train.batches(data, batch=4, seq=256, rng=np.random.default_rng(0), repeat_fraction=1.0)
    assert tokens.shape == (4, 256) and (tokens[:, 0] == 256).all()
    for row in tokens[:, 1:]:
        printable = (row != 7).nonzero().flatten()
        span = row[printable]
        assert len(span) % 2 == 0 and len(span) >= 40
        half = len(span) // 2
        torch.testing.assert_close(span[:half], span[half:])


def test_tampered_weights_are_rejected(tmp_path):
    for suffix in (".safetensors", ".json"):
        shutil.copy(zoo.WEIGHTS_DIR / f"attn-only-2l{suffix}", tmp_path / f"attn-only-2l{suffix}")
    zoo.load(tmp_path)  # a zoo-format directory loads
    weights = tmp_path / "attn-only-2l.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        zoo.load(tmp_path)
    with pytest.raises(ValueError, match="neither an embedded model"):
        zoo.load("no-such-model")


def test_training_is_deterministic(tmp_path):
    a = zoo_train.train("attn-only-2l", steps=3, out_dir=tmp_path / "a", log_every=100)
    b = zoo_train.train("attn-only-2l", steps=3, out_dir=tmp_path / "b", log_every=100)
    assert a["sha256"] == b["sha256"]
    assert a["loss_curve"] == b["loss_curve"]


def test_docs_zoo_page_is_current():
    from pathlib import Path

    from lens.zoo.report import markdown

    committed = (Path(__file__).parent.parent / "docs" / "zoo.md").read_text()
    assert committed == markdown(), "regenerate with: python -m lens.zoo.report > docs/zoo.md"
