"""``lens.utils``: TransformerLens 2.x's public utils with its signatures and semantics.

Oracles: exact math and properties (always run), and ``transformer_lens.utils`` itself on the same inputs
(tests that ``importorskip("transformer_lens")``; run them with
``PYTHONPATH=. .venv-tl/bin/python -m pytest tests/compat/test_utils.py``).
"""

from __future__ import annotations

import functools
import json
import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lens
from lens import utils
from lens.factored_matrix import FactoredMatrix
from lens.tokenizer import Tokenizer
from lens.utils import Slice
from tests.conftest import tiny_model

TL_REASON = "TransformerLens is an optional oracle; install transformer_lens (2.x) in a separate venv to compare"
EXACT = dict(atol=0, rtol=0)
T = torch.arange(2 * 7 * 3).reshape(2, 7, 3)

# (input, the same selection in Python/torch indexing of dim 1 of T)
SLICES = [
    (None, lambda t: t),
    (2, lambda t: t[:, 2]),
    (-1, lambda t: t[:, -1]),
    ((3,), lambda t: t[:, :3]),
    ((1, 5), lambda t: t[:, 1:5]),
    ((1, None, 2), lambda t: t[:, 1::2]),
    ((-3, None), lambda t: t[:, -3:]),
    (slice(2, 6), lambda t: t[:, 2:6]),
    ([4, 0, 4], lambda t: t[:, [4, 0, 4]]),
    ([-1, 1], lambda t: t[:, [6, 1]]),
    (range(1, 3), lambda t: t[:, 1:3]),
    (torch.tensor([5, 2]), lambda t: t[:, [5, 2]]),
    (np.array([0, 6]), lambda t: t[:, [0, 6]]),
    (np.array([True, False, False, True, False, False, True]), lambda t: t[:, [0, 3, 6]]),
    (torch.tensor(3), lambda t: t[:, 3]),
    ([], lambda t: t[:, :0]),
]


@functools.cache
def byte_model() -> lens.HookedTransformer:
    model = tiny_model("gpt2", d_vocab=259)
    model.set_tokenizer(Tokenizer.byte_level())
    return model


def tl_utils():
    pytest.importorskip("transformer_lens", reason=TL_REASON)
    import transformer_lens.utils as tlu

    return tlu


def test_public_names():
    """Every public function/class of TransformerLens's utils that needs neither its config class nor the
    network has the same name in lens.utils."""
    for name in (
        "to_numpy get_device test_prompt Slice SliceInput get_corner transpose tokenize_and_concatenate is_square "
        "is_lower_triangular init_kaiming_uniform_ init_kaiming_normal_ init_xavier_uniform_ init_xavier_normal_ "
        "calc_fan_in_and_fan_out remove_batch_dim get_offset_position_ids get_input_with_manually_prepended_bos "
        "get_tokens_with_bos_removed lm_accuracy lm_cross_entropy_loss gelu_new gelu_fast gelu_pytorch_tanh solu "
        "xielu XIELU ACTIVATION_FN_DICT get_nested_attr set_nested_attr repeat_along_head_dimension check_structure "
        "composition_scores get_attention_mask sample_logits download_file_from_hf print_gpu_mem "
        "override_or_use_default_value get_cumsum_along_dim keep_single_column LocallyOverridenDefaults "
        "is_library_available select_compatible_kwargs get_act_name get_dataset clear_huggingface_cache "
        "warn_if_mps USE_DEFAULT_VALUE CACHE_DIR get_tokenizer_with_bos"
    ).split():
        assert hasattr(utils, name), name
        assert name in utils.__all__, name


# -- Slice ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("given, index", SLICES, ids=lambda v: repr(v) if not callable(v) else "")
def test_slice_apply_is_python_indexing(given, index):
    got = Slice(given).apply(T, dim=1)
    assert torch.equal(got, index(T))
    assert torch.equal(Slice(given).apply(T.transpose(0, 1), dim=0), index(T).transpose(0, 1) if got.ndim == 3 else
                       index(T))  # fmt: skip
    assert torch.equal(Slice(given).apply(T, dim=-2), got)


def test_slice_modes_indices_unwrap_and_repr():
    assert Slice(None).mode == "identity" and Slice(None).apply(T) is T
    assert Slice(3).mode == "int" and Slice((1, 2)).mode == "slice" and Slice(slice(1)).mode == "slice"
    assert Slice([1]).mode == "array" and isinstance(Slice(torch.tensor([1])).slice, np.ndarray)
    assert Slice(Slice((1, 4))).slice == slice(1, 4)
    assert Slice(-2).indices().tolist() == [-2]
    assert Slice((1, None)).indices(5).tolist() == [1, 2, 3, 4]
    assert Slice((-2, None)).indices(5).tolist() == [3, 4]
    assert Slice([3, 0]).indices(5).tolist() == [3, 0]
    with pytest.raises(ValueError, match="max_ctx"):
        Slice((1, 2)).indices()
    kept = Slice.unwrap(2)
    assert kept.mode == "array" and Slice.unwrap(2).apply(T, 1).shape == (2, 1, 3)
    assert Slice.unwrap(kept) is kept and Slice.unwrap(None).mode == "identity"
    assert repr(Slice((1, 3))) == "Slice: slice(1, 3, None) Mode: slice "


@pytest.mark.parametrize("bad", [True, "last", 1.5, {1: 2}, (1, 2, 3, 4), (1.0, 2), ()])
def test_slice_rejects_bad_input(bad):
    with pytest.raises(ValueError, match="Invalid input_slice"):
        Slice(bad)


def test_slice_out_of_range_raises_index_error():
    with pytest.raises(IndexError, match="index 7 is out of range for a dimension of size 7"):
        Slice(7).apply(T, 1)
    with pytest.raises(IndexError, match=r"indices \[0, -8\]"):
        Slice([0, -8]).apply(T, 1)
    with pytest.raises(IndexError, match="boolean mask of length 2"):
        Slice(np.array([True, False])).apply(T, 1)
    with pytest.raises(ValueError, match="1-D"):
        Slice([[0, 1]])


# -- tensors ------------------------------------------------------------------------------------------------
def test_to_numpy():
    x = torch.randn(3, requires_grad=True)
    assert np.array_equal(utils.to_numpy(x), x.detach().numpy())
    bf = torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
    assert utils.to_numpy(bf).dtype == np.float32 and utils.to_numpy(bf).tolist() == [1.5, -2.0]
    arr = np.zeros(2)
    assert utils.to_numpy(arr) is arr
    assert utils.to_numpy([1, 2]).tolist() == [1, 2] and utils.to_numpy((1.0,)).shape == (1,)
    assert utils.to_numpy(3).item() == 3 and utils.to_numpy("a").item() == "a"
    with pytest.raises(ValueError, match="invalid type"):
        utils.to_numpy({"a": 1})


def test_get_corner_transpose_square_triangular():
    x = torch.arange(64).reshape(4, 4, 4)
    assert torch.equal(utils.get_corner(x, 2), x[:2, :2, :2])
    a, b = torch.randn(3, 5, 2), torch.randn(3, 2, 6)
    fm = FactoredMatrix(a, b)
    torch.testing.assert_close(utils.get_corner(fm, 2), (a @ b)[:2, :2, :2])
    with pytest.raises(TypeError, match="tensor or a FactoredMatrix"):
        utils.get_corner([1, 2])
    assert utils.transpose(torch.zeros(2, 3, 4)).shape == (2, 4, 3)
    assert utils.is_square(torch.zeros(3, 3)) and not utils.is_square(torch.zeros(3, 4))
    assert not utils.is_square(torch.zeros(2, 2, 2))
    assert utils.is_lower_triangular(torch.tril(torch.randn(4, 4)))
    assert not utils.is_lower_triangular(torch.ones(4, 4)) and not utils.is_lower_triangular(torch.zeros(2, 3))


def test_check_structure(capsys):
    t = torch.randn(4, 4)
    utils.check_structure(t, 3 * t + 1)
    assert capsys.readouterr().out == "PASSED\n"
    flipped = t.clone()
    flipped[0], flipped[1] = t[1], t[0]
    utils.check_structure(t, flipped)
    assert capsys.readouterr().out.startswith("row mismatch: [0")
    utils.check_structure(t, t + 100 * torch.arange(4), verbose=True)  # rows keep their order, columns do not
    out = capsys.readouterr().out
    assert out.startswith("Checking rows\nChecking columns\n") and out.splitlines()[-1].startswith("column mismatch")
    with pytest.raises(ValueError, match="2-D"):
        utils.check_structure(torch.zeros(2, 2), torch.zeros(2, 3))


def test_remove_batch_dim_cumsum_repeat():
    assert utils.remove_batch_dim(torch.zeros(1, 4, 2)).shape == (4, 2)
    assert utils.remove_batch_dim(torch.zeros(3, 4)).shape == (3, 4)
    t = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert utils.get_cumsum_along_dim(t, -1).tolist() == [[1, 3, 6], [4, 9, 15]]
    assert utils.get_cumsum_along_dim(t, -1, reverse=True).tolist() == [[6, 5, 3], [15, 11, 6]]
    assert utils.get_cumsum_along_dim(t, 0, reverse=True).tolist() == [[5, 7, 9], [4, 5, 6]]
    x = torch.randn(2, 3, 8)
    rep = utils.repeat_along_head_dimension(x, n_heads=4)
    assert rep.shape == (2, 3, 4, 8) and all(torch.equal(rep[:, :, h], x) for h in range(4))
    rep[:, :, 0] = 0
    assert torch.equal(rep[:, :, 1], x)  # cloned: heads do not share storage
    view = utils.repeat_along_head_dimension(x, n_heads=4, clone_tensor=False)
    assert view.data_ptr() == x.data_ptr()
    with pytest.raises(ValueError, match="batch, pos, d_model"):
        utils.repeat_along_head_dimension(torch.zeros(3, 8), 2)


def test_composition_scores_is_the_normalised_frobenius_norm_of_the_product():
    g = torch.Generator().manual_seed(0)
    left = FactoredMatrix(torch.randn(3, 16, 4, generator=g), torch.randn(3, 4, 16, generator=g))
    right = FactoredMatrix(torch.randn(2, 16, 4, generator=g), torch.randn(2, 4, 16, generator=g))
    scores = utils.composition_scores(left, right)
    assert scores.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            L, R = left.AB[i], right.AB[j]
            want = (L @ R).norm() / (L.norm() * R.norm())
            torch.testing.assert_close(scores[i, j], want, atol=1e-5, rtol=1e-4)
    assert bool((scores >= 0).all() and (scores <= 1 + 1e-6).all())
    same = utils.composition_scores(left[:2], right, broadcast_dims=False)
    assert same.shape == (2,)
    torch.testing.assert_close(same, scores[[0, 1], [0, 1]], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="rdim"):
        utils.composition_scores(left, FactoredMatrix(torch.randn(8, 2), torch.randn(2, 16)))


# -- initialisation -------------------------------------------------------------------------------------------
def test_fan_in_and_fan_out_convention():
    assert utils.calc_fan_in_and_fan_out(torch.empty(7)) == (1, 7)
    assert utils.calc_fan_in_and_fan_out(torch.empty(8, 16)) == (8, 16)
    assert utils.calc_fan_in_and_fan_out(torch.empty(4, 32, 8)) == (32, 32)
    for bad in (torch.tensor(1.0), torch.empty(1, 2, 3, 4)):
        with pytest.raises(ValueError, match="Fan in and fan out"):
            utils.calc_fan_in_and_fan_out(bad)


def test_init_functions_have_the_stated_bounds_and_stds():
    torch.manual_seed(0)
    w = torch.empty(200, 300)
    bound = math.sqrt(6 / 500)
    assert utils.init_xavier_uniform_(w) is w and w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    assert abs(utils.init_xavier_normal_(w, gain=2.0).std().item() - 2 * math.sqrt(2 / 500)) < 0.03 * 2 * math.sqrt(
        2 / 500
    )
    relu_gain = math.sqrt(2)
    std = utils.init_kaiming_normal_(w).std().item()
    assert abs(std - relu_gain / math.sqrt(200)) < 0.03 * relu_gain / math.sqrt(200)
    std = utils.init_kaiming_uniform_(w, nonlinearity="linear", mode="fan_out").std().item()
    assert abs(std - 1 / math.sqrt(300)) < 0.03 / math.sqrt(300)
    heads = utils.init_kaiming_uniform_(torch.empty(4, 64, 16), nonlinearity="linear")  # fan_in = d_model
    assert heads.abs().max() <= math.sqrt(3 / 64)
    with pytest.raises(ValueError, match="mode"):
        utils.init_kaiming_normal_(w, mode="fan_avg")


# -- activations -------------------------------------------------------------------------------------------
def test_activation_functions():
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    torch.testing.assert_close(utils.gelu_new(x), F.gelu(x, approximate="tanh"), atol=1e-12, rtol=0)
    torch.testing.assert_close(utils.gelu_fast(x), utils.gelu_new(x), atol=1e-9, rtol=0)
    torch.testing.assert_close(utils.gelu_pytorch_tanh(x), F.gelu(x, approximate="tanh"), **EXACT)
    torch.testing.assert_close(utils.solu(x), x * torch.softmax(x, -1), **EXACT)
    pos, neg = x[x > 0], x[x <= 0]
    torch.testing.assert_close(utils.xielu(pos), 0.8 * pos**2 + 0.5 * pos)
    want_neg = (torch.expm1(torch.clamp(neg, max=-1e-6)) - neg) * 0.8 + 0.5 * neg
    torch.testing.assert_close(utils.xielu(neg), want_neg)
    torch.testing.assert_close(utils.XIELU()(x.float()), utils.xielu(x.float()), atol=1e-6, rtol=1e-6)
    assert utils.ACTIVATION_FN_DICT["solu_ln"] is utils.solu and utils.ACTIVATION_FN_DICT["relu"] is F.relu


# -- tokens ------------------------------------------------------------------------------------------------
def test_get_offset_position_ids():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert utils.get_offset_position_ids(0, mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert utils.get_offset_position_ids(3, mask).tolist() == [[1, 2], [3, 4]]
    with pytest.raises(ValueError, match="past_kv_pos_offset"):
        utils.get_offset_position_ids(6, mask)


def _tok(side: str, pad: int = 0, bos: int = 1):
    return SimpleNamespace(padding_side=side, pad_token_id=pad, bos_token_id=bos, bos_token="<s>")


def test_get_attention_mask():
    tokens = torch.tensor([[0, 0, 5, 0, 6], [7, 0, 8, 9, 9]])
    left = utils.get_attention_mask(_tok("left"), tokens, prepend_bos=False)
    assert left.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]  # only leading pads are padding
    right = utils.get_attention_mask(_tok("right"), torch.tensor([[5, 0, 6, 0, 0]]), prepend_bos=False)
    assert right.tolist() == [[1, 1, 1, 0, 0]]
    bos_is_pad = utils.get_attention_mask(_tok("left", pad=1, bos=1), torch.tensor([[1, 1, 1, 5]]), prepend_bos=True)
    assert bos_is_pad.tolist() == [[0, 0, 1, 1]]
    assert utils.get_attention_mask(None, tokens, False).tolist() == torch.ones_like(tokens).tolist()
    no_pad = SimpleNamespace(padding_side="left", pad_token_id=None)
    assert bool(utils.get_attention_mask(no_pad, tokens, False).all())


def test_bos_helpers():
    assert utils.get_input_with_manually_prepended_bos(_tok("right"), "hi") == "<s>hi"
    assert utils.get_input_with_manually_prepended_bos(_tok("right"), ["a", "b"]) == ["<s>a", "<s>b"]
    assert utils.get_input_with_manually_prepended_bos(Tokenizer.byte_level(), "hi") == "<|bos|>hi"
    right = utils.get_tokens_with_bos_removed(_tok("right"), torch.tensor([[1, 5, 6, 0]]))
    assert right.tolist() == [[5, 6, 0]]
    left = utils.get_tokens_with_bos_removed(_tok("left"), torch.tensor([[0, 0, 1, 5], [1, 5, 6, 7]]))
    assert left.tolist() == [[0, 0, 5], [5, 6, 7]]
    shared = utils.get_tokens_with_bos_removed(_tok("left", pad=1, bos=1), torch.tensor([[1, 1, 5], [1, 5, 6]]))
    assert shared.tolist() == [[1, 5], [5, 6]]


# -- loss, accuracy, sampling ------------------------------------------------------------------------------
def test_lm_accuracy():
    tokens = torch.tensor([[0, 1, 2, 3]])
    logits = F.one_hot(torch.tensor([[1, 2, 0, 3]]), 5).float()  # predicts 1, 2 (right), then 0 (wrong)
    assert utils.lm_accuracy(logits, tokens, per_token=True).tolist() == [[True, True, False]]
    torch.testing.assert_close(utils.lm_accuracy(logits, tokens), torch.tensor(2 / 3))
    with pytest.raises(ValueError, match="2 positions"):
        utils.lm_accuracy(logits[:, :1], tokens[:, :1])


def test_sample_logits():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9], [5.0, 0.0, 0.0, 0.0]])
    before = logits.clone()
    assert utils.sample_logits(logits, temperature=0.0).tolist() == [1, 0]
    torch.manual_seed(0)
    assert all(utils.sample_logits(logits, top_k=1).tolist() == [1, 0] for _ in range(20))
    assert all(utils.sample_logits(logits, top_p=0.01).tolist() == [1, 0] for _ in range(20))
    top2 = {tuple(utils.sample_logits(logits, top_k=2).tolist()) for _ in range(200)}
    assert {t[0] for t in top2} == {1, 3}
    history = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]])
    penalised = {tuple(utils.sample_logits(logits, freq_penalty=10.0, tokens=history).tolist()) for _ in range(50)}
    assert all(a != 1 and b != 0 for a, b in penalised)
    assert torch.equal(logits, before)
    with pytest.raises(ValueError, match="top_k"):
        utils.sample_logits(logits, top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        utils.sample_logits(logits, top_p=1.5)
    with pytest.raises(ValueError, match="frequency penalty"):
        utils.sample_logits(logits, freq_penalty=1.0)


# -- test_prompt ------------------------------------------------------------------------------------------
def test_test_prompt_reports_rank_logit_and_prob(capsys):
    model = byte_model()
    utils.test_prompt("ab", "c", model, top_k=3)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Tokenized prompt: ['<|bos|>', 'a', 'b']"
    assert out[1] == "Tokenized answer: [' ', 'c']"  # a space is prepended, then two byte tokens
    tokens = model.to_tokens(" c", prepend_bos=False)
    logits = model(torch.cat([model.to_tokens("ab"), tokens], dim=1))[0]
    for step, (line_at, target) in enumerate(((2, tokens[0, 0]), (7, tokens[0, 1]))):
        row = logits[2 + step]
        probs = row.softmax(-1)
        rank = int((probs > probs[target]).sum())
        assert out[line_at] == "Performance on answer token:"
        assert out[line_at + 1] == (
            f"Rank: {rank: <8} Logit: {row[target].item():5.2f} Prob: {probs[target].item():6.2%} "
            f"Token: |{model.to_str_tokens(target[None])[0]}|"
        )
        best = int(row.argmax())
        assert out[line_at + 2].startswith(f"Top 0th token. Logit: {row[best].item():5.2f} ")
    assert out[-1].startswith("Ranks of the answer tokens: [(' ', ") and len(out) == 13
    utils.test_prompt("ab", ["c", "d"], model, print_details=False)
    ranks = capsys.readouterr().out
    assert ranks.startswith("Ranks of the answer tokens: [[(' ', ") and ranks.count("\n") == 1
    with pytest.raises(ValueError, match="top_k"):
        utils.test_prompt("ab", "c", model, top_k=1000)


# -- misc ------------------------------------------------------------------------------------------------
def test_nested_attrs_and_defaults():
    model = byte_model()
    assert utils.get_nested_attr(model, "blocks.0.attn") is model.blocks[0].attn
    assert utils.get_nested_attr(model, "cfg.n_layers") == model.cfg.n_layers
    holder = SimpleNamespace(inner=SimpleNamespace(value=1))
    utils.set_nested_attr(holder, "inner.value", 5)
    assert holder.inner.value == 5
    assert utils.override_or_use_default_value(True) is True
    assert utils.override_or_use_default_value(True, False) is False
    assert utils.USE_DEFAULT_VALUE is None
    assert utils.select_compatible_kwargs({"a": 1, "z": 2}, lambda a, b=0: a) == {"a": 1}


def test_locally_overriden_defaults_restores_on_exit_and_on_error():
    model = byte_model()
    with utils.LocallyOverridenDefaults(model, prepend_bos=False, padding_side="left"):
        assert model.to_tokens("a").tolist() == [[97]]
        assert model.to_tokens(["a", "bc"]).tolist()[0] == [258, 97]  # left padding
    assert model.cfg.default_prepend_bos is True and model.cfg.default_padding_side == "right"
    with pytest.raises(RuntimeError), utils.LocallyOverridenDefaults(model, prepend_bos=False):
        raise RuntimeError("boom")
    assert model.cfg.default_prepend_bos is True
    with utils.LocallyOverridenDefaults(model, prepend_bos=None):
        assert model.cfg.default_prepend_bos is True
    with pytest.raises(ValueError, match="not a valid parameter"):
        utils.LocallyOverridenDefaults(model, padding="left")
    with pytest.raises(ValueError, match="padding_side must be one of"):
        utils.LocallyOverridenDefaults(model, padding_side="middle")


def test_environment_helpers(capsys, monkeypatch, tmp_path):
    assert utils.is_library_available("torch") and not utils.is_library_available("surely_not_a_module_xyz")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.delenv("LENS_ALLOW_MPS", raising=False)
    monkeypatch.delenv("TRANSFORMERLENS_ALLOW_MPS", raising=False)
    assert utils.get_device().type == want
    utils.print_gpu_mem("step")
    gib = torch.cuda.memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    assert capsys.readouterr().out == f"step ~ {round(gib, 2)} GiB allocated on GPU.\n"
    pytest.importorskip("huggingface_hub", reason="huggingface_hub gives the cache directory to compare")
    from huggingface_hub import constants

    assert utils.CACHE_DIR == constants.HF_HUB_CACHE
    cache_dir = tmp_path / "hub"
    (cache_dir / "models--x").mkdir(parents=True)
    monkeypatch.setattr("lens.utilities.misc.CACHE_DIR", str(cache_dir))
    utils.clear_huggingface_cache()
    assert not cache_dir.exists()


def test_download_file_from_hf(monkeypatch, tmp_path, capsys):
    hub = pytest.importorskip("huggingface_hub", reason="download_file_from_hf needs huggingface_hub")
    with pytest.raises(OSError, match="'no-such/repo-xyz'"):
        utils.download_file_from_hf("no-such/repo-xyz", "config.json", cache_dir=str(tmp_path), local_files_only=True)
    files = {"cfg.json": tmp_path / "cfg.json", "w.pth": tmp_path / "w.pth", "notes.txt": tmp_path / "notes.txt"}
    files["cfg.json"].write_text(json.dumps({"d_model": 8}))
    torch.save({"w": torch.ones(2)}, files["w.pth"])
    files["notes.txt"].write_text("x")
    seen = {}

    def fake_download(repo_id, filename, subfolder=None, cache_dir=None, revision=None):
        seen.update(repo_id=repo_id, revision=revision)
        return str(files[filename])

    monkeypatch.setattr(hub, "hf_hub_download", fake_download)
    assert utils.download_file_from_hf("r/x", "cfg.json", revision="main", unknown_kwarg=1) == {"d_model": 8}
    assert seen == {"repo_id": "r/x", "revision": "main"}
    assert torch.equal(utils.download_file_from_hf("r/x", "w.pth")["w"], torch.ones(2))
    assert utils.download_file_from_hf("r/x", "notes.txt") == str(files["notes.txt"])
    assert "File type not supported: txt" in capsys.readouterr().out


# -- datasets ----------------------------------------------------------------------------------------------
def test_tokenize_and_concatenate_without_datasets_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"lens\[datasets\]"):
        utils.tokenize_and_concatenate(object(), Tokenizer.byte_level())
    with pytest.raises(ImportError, match=r"lens\[datasets\]"):
        utils.get_dataset("pile")


def _hf_tokenizer():
    transformers = pytest.importorskip("transformers", reason="an HF tokenizer is built with transformers")
    import tokenizers

    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"▁w{i}" for i in range(20)]
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = tokenizers.decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.mark.parametrize("kind", ["lens", "hf"])
@pytest.mark.parametrize("add_bos", [True, False])
def test_tokenize_and_concatenate(kind, add_bos):
    datasets = pytest.importorskip("datasets", reason="tokenize_and_concatenate needs the optional datasets package")
    texts = [" ".join(f"w{(i * 7 + j) % 20}" for j in range(n)) for i, n in enumerate([5, 9, 0, 13, 4])]
    dataset = datasets.Dataset.from_dict({"text": texts, "meta": list(range(len(texts)))})
    tok = Tokenizer.byte_level() if kind == "lens" else _hf_tokenizer()
    encode = (lambda t: tok.encode(t, add_bos=False)) if kind == "lens" else (lambda t: tok.encode(t))
    ids = []
    for i, text in enumerate(texts):
        ids += ([tok.eos_token_id] if i else []) + list(encode(text))
    length = 6
    seq = length - 1 if add_bos else length
    out = utils.tokenize_and_concatenate(dataset, tok, max_length=length, add_bos_token=add_bos, num_proc=None)
    assert out.column_names == ["tokens"]
    rows = out[:]["tokens"]
    assert isinstance(rows, torch.Tensor) and rows.shape == (len(ids) // seq, length)
    body = rows[:, 1:] if add_bos else rows
    assert body.flatten().tolist() == ids[: len(ids) // seq * seq]
    if add_bos:
        assert bool((rows[:, 0] == tok.bos_token_id).all())
    short = utils.tokenize_and_concatenate(datasets.Dataset.from_dict({"text": ["w1"]}), tok, max_length=40)
    pad = tok.pad_token_id
    assert short[:]["tokens"].shape == (1, 40) and bool((short[:]["tokens"][0, -5:] == pad).all())
    with pytest.raises(ValueError, match="column 'body'"):
        utils.tokenize_and_concatenate(dataset, tok, column_name="body")
    with pytest.raises(ValueError, match="max_length"):
        utils.tokenize_and_concatenate(dataset, tok, max_length=1)
    assert utils.keep_single_column(dataset, "meta").column_names == ["meta"]


def _saved_hf_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers", reason="an HF tokenizer is built with transformers")
    _hf_tokenizer().save_pretrained(tmp_path / "tok")
    return transformers.AutoTokenizer.from_pretrained(tmp_path / "tok")


def test_get_tokenizer_with_bos(tmp_path):
    lens_tok = Tokenizer.byte_level()
    assert utils.get_tokenizer_with_bos(lens_tok) is lens_tok
    tok = _saved_hf_tokenizer(tmp_path)
    with_bos = utils.get_tokenizer_with_bos(tok)
    assert with_bos is not tok and with_bos.init_kwargs["add_bos_token"] is True
    ids = with_bos.encode("w1")  # transformers 5 adds the BOS then; 4.x keeps the flag only for some classes
    assert (ids[1:] if ids[:1] == [tok.bos_token_id] else ids) == tok.encode("w1")
    assert utils.get_tokenizer_with_bos(with_bos) is with_bos


# -- TransformerLens as the oracle -------------------------------------------------------------------------
@pytest.mark.parametrize("given, _", SLICES, ids=lambda v: repr(v) if not callable(v) else "")
def test_slice_matches_transformer_lens(given, _):
    tlu = tl_utils()
    if isinstance(given, list) and not given:
        pytest.skip("an empty index list: TransformerLens raises IndexError (float array), lens selects nothing")
    # TransformerLens refuses a range; lens takes it as indices (compared with TL's list of the same indices)
    ours, theirs = Slice(given), tlu.Slice(list(given) if isinstance(given, range) else given)
    assert torch.equal(ours.apply(T, dim=1), theirs.apply(T, dim=1))
    zero_d = isinstance(given, torch.Tensor) and given.ndim == 0  # TL: mode "array" (a 0-d array), same result
    assert ours.mode == theirs.mode or (zero_d and ours.mode == "int")
    if ours.mode != "int":
        assert ours.indices(7).tolist() == np.asarray(theirs.indices(7)).tolist()
    if isinstance(given, (int, tuple, slice, type(None))):
        assert repr(ours) == repr(theirs)
        assert Slice.unwrap(given).apply(T, 1).shape == tlu.Slice.unwrap(given).apply(T, 1).shape


def test_tensor_utils_match_transformer_lens(capsys):
    tlu = tl_utils()
    import transformer_lens as tl

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, generator=g)
    for value in (x, [1, 2], (3.0,), 2, 1.5, True, "s", np.ones(2)):
        assert np.array_equal(utils.to_numpy(value), tlu.to_numpy(value))
    assert torch.equal(utils.get_corner(x, 2), tlu.get_corner(x, 2))
    a, b = torch.randn(2, 6, 3, generator=g), torch.randn(2, 3, 6, generator=g)
    torch.testing.assert_close(utils.get_corner(FactoredMatrix(a, b)), tlu.get_corner(tl.FactoredMatrix(a, b)))
    assert torch.equal(utils.transpose(x), tlu.transpose(x))
    for m in (torch.eye(3), torch.ones(3, 3), torch.zeros(2, 3), torch.zeros(2, 2, 2)):
        assert utils.is_square(m) == tlu.is_square(m) and utils.is_lower_triangular(m) == tlu.is_lower_triangular(m)
    for t in (torch.zeros(1, 3), torch.zeros(2, 3)):
        assert torch.equal(utils.remove_batch_dim(t), tlu.remove_batch_dim(t))
    for reverse in (False, True):
        assert torch.equal(utils.get_cumsum_along_dim(x, 1, reverse), tlu.get_cumsum_along_dim(x, 1, reverse))
    assert torch.equal(utils.repeat_along_head_dimension(x, 3), tlu.repeat_along_head_dimension(x, 3))
    m = torch.randn(5, 5, generator=g)
    for other in (2 * m + 1, m.flip(0), m.flip(1)):
        for verbose in (False, True):
            utils.check_structure(m, other, verbose=verbose)
            ours = capsys.readouterr().out
            tlu.check_structure(m, other, verbose=verbose)
            assert ours.replace("columns", "rows") == capsys.readouterr().out.replace("columns", "rows")
    left = (torch.randn(3, 8, 2, generator=g), torch.randn(3, 2, 8, generator=g))
    right = (torch.randn(4, 8, 2, generator=g), torch.randn(4, 2, 8, generator=g))
    for broadcast in (True, False):
        r = right if broadcast else tuple(t[:3] for t in right)
        want = tlu.composition_scores(tl.FactoredMatrix(*left), tl.FactoredMatrix(*r), broadcast_dims=broadcast)
        got = utils.composition_scores(FactoredMatrix(*left), FactoredMatrix(*r), broadcast_dims=broadcast)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_init_and_activations_match_transformer_lens():
    tlu = tl_utils()
    for shape in ((7,), (8, 16), (4, 32, 8)):
        assert utils.calc_fan_in_and_fan_out(torch.empty(shape)) == tlu.calc_fan_in_and_fan_out(torch.empty(shape))
    for name, kwargs in [
        ("init_xavier_uniform_", dict(gain=1.5)),
        ("init_xavier_normal_", {}),
        ("init_kaiming_uniform_", dict(nonlinearity="leaky_relu", a=0.1, mode="fan_out")),
        ("init_kaiming_normal_", dict(gain=0.5)),
    ]:
        ours, theirs = torch.empty(4, 32, 8), torch.empty(4, 32, 8)
        torch.manual_seed(3)
        getattr(utils, name)(ours, **kwargs)
        torch.manual_seed(3)
        getattr(tlu, name)(theirs, **kwargs)
        torch.testing.assert_close(ours, theirs, atol=1e-7, rtol=1e-6)
    x = torch.randn(4, 5, 33)
    for name in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh", "solu", "xielu"):
        torch.testing.assert_close(getattr(utils, name)(x), getattr(tlu, name)(x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(utils.XIELU(0.7, 0.9, 0.4)(x), tlu.XIELU(0.7, 0.9, 0.4)(x), atol=1e-6, rtol=1e-6)
    assert set(utils.ACTIVATION_FN_DICT) == set(tlu.ACTIVATION_FN_DICT)


def test_token_utils_match_transformer_lens():
    tlu = tl_utils()
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    for offset in (0, 2, 5):
        assert torch.equal(utils.get_offset_position_ids(offset, mask), tlu.get_offset_position_ids(offset, mask))
    tokens = torch.tensor([[0, 0, 1, 5, 0], [1, 5, 6, 7, 8], [0, 1, 5, 0, 0]])
    for tok in (_tok("left"), _tok("right"), _tok("left", pad=1, bos=1), _tok("right", pad=1, bos=1)):
        for bos in (True, False):
            assert torch.equal(utils.get_attention_mask(tok, tokens, bos), tlu.get_attention_mask(tok, tokens, bos))
        if not (tok.padding_side == "left" and tok.pad_token_id == tok.bos_token_id):
            want = tlu.get_tokens_with_bos_removed(tok, tokens)
            assert torch.equal(utils.get_tokens_with_bos_removed(tok, tokens), want)
        for text in ("hi", ["a", "b"]):
            want = tlu.get_input_with_manually_prepended_bos(tok, text)
            assert utils.get_input_with_manually_prepended_bos(tok, text) == want
    shared = torch.tensor([[1, 1, 5], [1, 5, 6]])
    tok = _tok("left", pad=1, bos=1)
    assert torch.equal(utils.get_tokens_with_bos_removed(tok, shared), tlu.get_tokens_with_bos_removed(tok, shared))


def test_loss_accuracy_and_sampling_match_transformer_lens():
    tlu = tl_utils()
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 11, generator=g)
    tokens = torch.randint(0, 11, (3, 6), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    for per_token in (False, True):
        assert torch.equal(utils.lm_accuracy(logits, tokens, per_token), tlu.lm_accuracy(logits, tokens, per_token))
        for m in (None, mask):
            want = tlu.lm_cross_entropy_loss(logits, tokens, m, per_token)
            torch.testing.assert_close(utils.lm_cross_entropy_loss(logits, tokens, m, per_token), want)
    last = logits[:, -1]
    for kwargs in (
        dict(temperature=0.0),
        dict(),
        dict(temperature=0.7, top_k=3),
        dict(top_p=0.6),
        dict(top_p=1.0),
        dict(freq_penalty=2.0, tokens=tokens),
    ):
        torch.manual_seed(11)
        ours = torch.stack([utils.sample_logits(last, **kwargs) for _ in range(30)])
        torch.manual_seed(11)
        theirs = torch.stack([tlu.sample_logits(last, **kwargs) for _ in range(30)])
        assert torch.equal(ours, theirs), kwargs


@pytest.mark.parametrize(
    "name", ["scale4ln1", "normalized27ln2", "pattern3", "attn3", "k6", "pre5", "post0", "z2a", "embed", "pos_embed",
             "scale", "normalized", "hook_embed", "blocks.0.hook_resid_pre"],
)  # fmt: skip
def test_get_act_name_without_layer_matches_transformer_lens(name):
    tlu = tl_utils()
    assert utils.get_act_name(name) == tlu.get_act_name(name)


@pytest.mark.parametrize(
    "name", ["resid_pre", "resid_mid", "attn_out", "mlp_out", "attn_scores", "rot_q", "q", "result", "pre",
             "pre_linear", "attn", "key", "mlp_post", "q_input", "attn_in", "mlp_in", "scale", "normalized"],
)  # fmt: skip
@pytest.mark.parametrize("layer, layer_type", [(2, None), (0, "ln2"), (1, "a"), (3, "m"), (4, "b")])
def test_get_act_name_with_layer_matches_transformer_lens(name, layer, layer_type):
    tlu = tl_utils()
    if name in ("scale", "normalized") and layer_type in (None, "b"):  # TL: blocks.2.hook_scale (no such hook)
        assert utils.get_act_name(name, layer, layer_type) == f"blocks.{layer}.ln1.hook_{name}"
        return
    assert utils.get_act_name(name, layer, layer_type) == tlu.get_act_name(name, layer, layer_type)


def test_test_prompt_prints_what_transformer_lens_prints(capsys):
    pytest.importorskip("transformer_lens", reason=TL_REASON)
    import transformer_lens.utils as tlu

    from tests.compat._tl import hf_tokenizer, lens_tokenizer, tl_and_lens

    tl_model, model = tl_and_lens("gpt2")
    if tl_model.tokenizer is None:
        tl_model.set_tokenizer(hf_tokenizer())
    if model.tokenizer is None:
        model.set_tokenizer(lens_tokenizer())
    for answer, kwargs in [
        ("Mary", {}),
        ("Mary went to", dict(top_k=4)),
        (["Mary", "John", " the"], dict(top_k=2)),
        ("store", dict(print_details=False)),
        ("store", dict(prepend_space_to_answer=True, prepend_bos=True)),
    ]:
        tlu.test_prompt("John and Mary went to the store , John gave a drink to", answer, tl_model, **kwargs)
        theirs = capsys.readouterr().out
        utils.test_prompt("John and Mary went to the store , John gave a drink to", answer, model, **kwargs)
        assert capsys.readouterr().out == theirs, (answer, kwargs)


def test_get_tokenizer_with_bos_matches_transformer_lens(tmp_path):
    tlu = tl_utils()
    tok = _saved_hf_tokenizer(tmp_path)
    ours, theirs = utils.get_tokenizer_with_bos(tok), tlu.get_tokenizer_with_bos(tok)
    assert type(ours) is type(theirs) and ours.init_kwargs == theirs.init_kwargs
    assert ours.encode("w1 w2") == theirs.encode("w1 w2")


def test_tokenize_and_concatenate_matches_transformer_lens():
    tlu = tl_utils()
    datasets = pytest.importorskip("datasets", reason="tokenize_and_concatenate needs the optional datasets package")
    tok = _hf_tokenizer()
    texts = [" ".join(f"w{(i * 3 + j) % 20}" for j in range(n)) for i, n in enumerate([50, 90, 0, 130, 40, 7])]
    dataset = datasets.Dataset.from_dict({"text": texts, "id": list(range(len(texts)))})
    for max_length, add_bos in ((16, True), (9, False), (1000, True)):
        want = tlu.tokenize_and_concatenate(dataset, tok, max_length=max_length, add_bos_token=add_bos, num_proc=1)
        got = utils.tokenize_and_concatenate(dataset, tok, max_length=max_length, add_bos_token=add_bos, num_proc=1)
        assert torch.equal(got[:]["tokens"], want[:]["tokens"]), (max_length, add_bos)
