"""Misuse that used to end in a deep torch traceback (or silently) gives a clear error (issue #12)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lens
from tests.tiny import VOCAB, tiny_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model():
    return tiny_model("gpt2")


@pytest.fixture
def tokens():
    return torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))


# -- hooks returning another dtype or device ---------------------------------------------------------
def to_double(x, hook):
    return x.double()


def test_hook_returning_another_dtype_names_hook_expected_and_got(model, tokens):
    with pytest.raises(ValueError) as info:
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_mid", to_double)])
    msg = str(info.value)
    assert "to_double" in msg and "blocks.0.hook_resid_mid" in msg
    assert "torch.float64" in msg and "torch.float32" in msg
    assert not model.hook_dict["blocks.0.hook_resid_mid"].has_hooks  # removed although the forward raised


def test_hook_returning_another_device_names_hook_expected_and_got(model, tokens):

    class Elsewhere(torch.Tensor):  # reports another device, so no second device is needed
        @property
        def device(self):
            return torch.device("meta")

    def move(x, hook):
        return x.as_subclass(Elsewhere)

    with pytest.raises(ValueError) as info:
        model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", move)])
    msg = str(info.value)
    assert "move" in msg and "hook_embed" in msg and "meta" in msg and "cpu" in msg


def test_backward_hook_returning_another_dtype_names_hook_expected_and_got(model, tokens):
    with model.hooks(bwd_hooks=[("hook_embed", to_double)]), pytest.raises(ValueError) as info:
        model(tokens, return_type="loss").backward()
    msg = str(info.value)
    assert "to_double" in msg and "hook_embed" in msg and "torch.float64" in msg and "torch.float32" in msg


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to return a tensor on")
def test_hook_returning_a_cuda_tensor_on_a_cpu_model(model, tokens):
    with pytest.raises(ValueError, match="cuda"):
        model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", lambda x, hook: x.cuda())])


def test_hook_keeping_dtype_and_device_still_replaces(model, tokens):
    out = model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", lambda x, hook: x.double().float() * 0)])
    zero = model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", lambda x, hook: torch.zeros_like(x))])
    assert torch.equal(out, zero)


# -- a batch of size 0 ---------------------------------------------------------------------------------
def test_batch_of_size_zero_is_a_clear_error(model):
    empty = torch.zeros(0, 5, dtype=torch.long)
    for call in (lambda: model(empty), lambda: model.run_with_cache(empty), lambda: model.check_tokens(empty)):
        with pytest.raises(ValueError, match=r"shape \(0, 5\): a batch of size 0"):
            call()
    with pytest.raises(ValueError, match="empty"):  # generation's own check comes first, as clear
        model.generate(empty, 3, stop_at_eos=False)


def test_residual_input_of_size_zero_is_a_clear_error(model):
    for shape in ((0, 4, model.cfg.d_model), (2, 0, model.cfg.d_model)):
        with pytest.raises(ValueError, match=r"residual stream input has shape"):
            model(torch.zeros(shape), start_at_layer=1)


# -- incl_bwd under no_grad / inference_mode -------------------------------------------------------------
@pytest.mark.parametrize("ctx", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
def test_incl_bwd_without_gradients_is_a_clear_error(model, tokens, ctx):
    with ctx(), pytest.raises(ValueError, match=ctx.__name__):
        model.run_with_cache(tokens, incl_bwd=True, return_type="loss")
    assert not any(hp.has_hooks for hp in model.hook_dict.values())
    _, cache = model.run_with_cache(tokens, incl_bwd=True, return_type="loss", names_filter="hook_embed")
    assert cache["hook_embed_grad"].shape == cache["hook_embed"].shape  # works with gradients on


# -- the command line -----------------------------------------------------------------------------------
def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "lens", "demo", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def _assert_usage_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("usage: lens demo")
    assert "lens demo: error: " in result.stderr
    for word in words:
        assert word in result.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (["--max-new-tokens", "-5"], ["--max-new-tokens", "-5", "at least 1"]),
        (["--max-new-tokens", "0"], ["--max-new-tokens", "at least 1"]),
        (["--max-new-tokens", "many"], ["--max-new-tokens", "'many'"]),
        (["--max-new-tokens", "100000", "--no-report"], ["--max-new-tokens", "100000", "context"]),
        (["--model", "no-such-model", "--no-report"], ["--model", "no-such-model"]),
    ],
)
def test_cli_bad_values_are_usage_errors(tmp_path, args, words):
    _assert_usage_error(_cli(*args, cwd=tmp_path), *words)


def test_cli_out_that_is_a_file_or_cannot_be_created(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    _assert_usage_error(_cli("--out", str(afile), cwd=tmp_path), "--out", str(afile), "not a directory")
    below = afile / "report"
    _assert_usage_error(_cli("--out", str(below), cwd=tmp_path), "--out", str(below), "cannot create")
    assert afile.read_text() == "x"


# -- from_pretrained names the source as given -----------------------------------------------------------
@pytest.mark.parametrize("name", ["hf://gpt2", "gpt2", "EleutherAI/pythia-70m", "hf://org/some-model"])
def test_from_pretrained_quotes_the_name_as_given(tmp_path, monkeypatch, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        lens.HookedTransformer.from_pretrained(name)
    assert repr(name) in str(info.value)
    assert "hf:/" + name.removeprefix("hf://") not in str(info.value).replace(name, "")  # no folded 'hf:/gpt2'
