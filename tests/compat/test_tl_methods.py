"""TransformerLens-named model methods notebooks call (``lens/tl_methods.py``) and per-layer ``attn.QK`` / ``.OV``.

Oracles: lens's own explicit API on the same weights (``from_pretrained``, ``process_weights``, dense
products for composition scores; always run) and TransformerLens on identical weights (optional; skipped
without ``transformer_lens``).
"""

from __future__ import annotations

import copy
import itertools
import warnings

import pytest
import torch

import lens
from lens.tl_methods import fill_missing_keys
from tests.compat._tl import lens_model, tokens_for
from tests.tiny import saved, tiny_model


def log_probs(model, tokens):
    with torch.no_grad():
        return model(tokens).log_softmax(-1)


def assert_same_state(a, b, atol=0.0):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], atol=atol, rtol=0, msg=key)


# -- from_pretrained_no_processing ----------------------------------------------------------------------
def test_from_pretrained_no_processing_is_from_pretrained_unprocessed():
    directory, _ = saved("gpt2")
    plain = lens.HookedTransformer.from_pretrained(directory)
    model = lens.HookedTransformer.from_pretrained_no_processing(directory)
    assert_same_state(model, plain)
    folded = lens.HookedTransformer.from_pretrained_no_processing(directory, fold_ln=True)
    assert_same_state(folded, lens.HookedTransformer.from_pretrained(directory, fold_ln=True))
    with pytest.raises(TypeError, match="fold_lnn"):
        lens.HookedTransformer.from_pretrained_no_processing(directory, fold_lnn=True)


# -- process_weights_ / load_and_process_state_dict ---------------------------------------------------
def test_process_weights_in_place_has_transformer_lens_defaults_on_layernorm():
    model = tiny_model("gpt2")
    tokens = tokens_for(model)
    before = log_probs(model, tokens)
    expected = copy.deepcopy(model).process_weights(
        fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is skipped on a LayerNorm model
        assert model.process_weights_() is None
    assert_same_state(model, expected)
    torch.testing.assert_close(log_probs(model, tokens), before, atol=1e-4, rtol=0)
    assert set(model.cfg.extra["weight_processing"]) == {
        "fold_ln",
        "center_writing_weights",
        "center_unembed",
        "fold_value_biases",
    }


def test_process_weights_skips_centering_without_layernorm_with_a_warning():
    model = tiny_model("llama")
    tokens = tokens_for(model)
    before = log_probs(model, tokens)
    with pytest.raises(ValueError, match="center_writing_weights"):  # lens's explicit API refuses
        copy.deepcopy(model).process_weights(center_writing_weights=True)
    expected = copy.deepcopy(model).process_weights(fold_ln=True, center_unembed=True, fold_value_biases=True)
    with pytest.warns(UserWarning, match="normalization='RMS'.*center_writing_weights is skipped"):
        model.process_weights_()
    assert_same_state(model, expected)
    torch.testing.assert_close(log_probs(model, tokens), before, atol=1e-4, rtol=0)


def test_process_weights_skips_fold_ln_without_norms_with_a_warning():
    model = tiny_model("attn_only", normalization=None)
    tokens = tokens_for(model)
    before = log_probs(model, tokens)
    with pytest.warns(UserWarning) as record:
        model.process_weights_()
    messages = " ".join(str(w.message) for w in record)
    assert "fold_ln is skipped" in messages and "center_writing_weights is skipped" in messages
    assert model.cfg.extra["weight_processing"] == ["center_unembed", "fold_value_biases"]
    torch.testing.assert_close(log_probs(model, tokens), before, atol=1e-4, rtol=0)


def test_process_weights_refactor_flag_is_passed_on():
    model = tiny_model("gpt2")
    expected = copy.deepcopy(model).process_weights(
        fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True,
        refactor_factored_attn_matrices=True,
    )  # fmt: skip
    model.process_weights_(refactor_factored_attn_matrices=True)
    assert_same_state(model, expected)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_load_and_process_state_dict_equals_loading_then_processing(family):
    source = tiny_model(family, seed=3)
    target = tiny_model(family, seed=4)
    tokens = tokens_for(source)
    expected = copy.deepcopy(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected.process_weights_()
        target.load_and_process_state_dict(source.state_dict())
    assert_same_state(target, expected)
    torch.testing.assert_close(log_probs(target, tokens), log_probs(source, tokens), atol=1e-4, rtol=0)


def test_load_and_process_state_dict_without_processing_is_a_plain_load():
    source, target = tiny_model("gpt2", seed=3), tiny_model("gpt2", seed=4)
    state = source.state_dict()
    target.load_and_process_state_dict(
        state, fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False
    )
    assert_same_state(target, source)
    assert state.keys() == source.state_dict().keys()  # the caller's dict is not consumed


@pytest.mark.filterwarnings("ignore:this model does not use LayerNorm")
def test_load_and_process_state_dict_checks_flags_before_loading():
    source, target = tiny_model("llama", seed=3), tiny_model("llama", seed=4)
    kept = copy.deepcopy(target)
    with pytest.raises(ValueError, match="rotary"):
        target.load_and_process_state_dict(source.state_dict(), refactor_factored_attn_matrices=True)
    assert_same_state(target, kept)


def test_fill_missing_keys_fills_from_the_model_and_warns_for_weights_only():
    model = tiny_model("gpt2")
    full = model.state_dict()
    partial = {k: torch.zeros_like(v) for k, v in full.items() if k != "blocks.0.attn.qkv_weight"}
    partial.pop("blocks.1.attn.qkv_bias")
    with pytest.warns(UserWarning, match="blocks.0.attn.qkv_weight") as record:
        filled = model.fill_missing_keys(partial)
    assert filled is partial and filled.keys() == full.keys()
    assert not any("qkv_bias" in str(w.message) for w in record)  # a missing bias is filled silently
    torch.testing.assert_close(filled["blocks.0.attn.qkv_weight"], full["blocks.0.attn.qkv_weight"])
    torch.testing.assert_close(filled["blocks.1.attn.qkv_bias"], full["blocks.1.attn.qkv_bias"])
    assert filled["blocks.0.attn.o_weight"].abs().sum() == 0  # keys given are kept as given
    with pytest.raises(TypeError, match="dict"):
        fill_missing_keys(model, list(full.items()))


# -- small helpers --------------------------------------------------------------------------------------
def test_to_single_str_token_is_the_one_token_string():
    model = lens_model("gpt2")
    for token in (0, 5, model.cfg.d_vocab - 1):
        assert model.to_single_str_token(token) == model.to_str_tokens(torch.tensor([token]))[0]
    for bad in (torch.tensor(3), "3", 3.0, True):
        with pytest.raises(TypeError, match="one int token id"):
            model.to_single_str_token(bad)


def test_move_model_modules_to_device_and_mps():
    model = tiny_model("gpt2", device="cpu")
    assert model.move_model_modules_to_device() is model
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    if not torch.backends.mps.is_available():
        with pytest.raises((RuntimeError, TypeError)):  # torch's own error: no MPS device here
            model.mps()


# -- composition scores and per-layer factored circuits ---------------------------------------------------
def dense_score(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    return (left @ right).norm() / (left.norm() * right.norm())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("mode", ["Q", "K", "V"])
def test_all_composition_scores_are_the_dense_scores_of_earlier_into_later_heads(family, mode):
    model = tiny_model(family, n_layers=3)
    scores = model.all_composition_scores(mode)
    n, h = model.cfg.n_layers, model.cfg.n_heads
    assert scores.shape == (n, h, n, h)
    ov, qk = model.OV.AB, model.QK.AB
    right = {"Q": qk, "K": qk.mT, "V": ov}[mode]
    for l1, h1, l2, h2 in itertools.product(range(n), range(h), range(n), range(h)):
        want = dense_score(ov[l1, h1], right[l2, h2]) if l1 < l2 else torch.tensor(0.0)
        torch.testing.assert_close(scores[l1, h1, l2, h2], want, atol=1e-5, rtol=1e-4)


def test_all_composition_scores_rejects_other_modes():
    with pytest.raises(ValueError, match=r"mode must be one of \['Q', 'K', 'V'\], got 'q'"):
        tiny_model("gpt2").all_composition_scores("q")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_per_layer_qk_and_ov_are_the_model_level_circuits(family):
    model = tiny_model(family)  # llama: grouped-query attention, key/value heads repeated per query head
    for i, block in enumerate(model.blocks):
        assert block.attn.QK.shape == block.attn.OV.shape == (model.cfg.n_heads, model.cfg.d_model, model.cfg.d_model)
        torch.testing.assert_close(block.attn.QK.AB, model.QK.AB[i], atol=0, rtol=0)
        torch.testing.assert_close(block.attn.OV.AB, model.OV.AB[i], atol=0, rtol=0)


# -- TransformerLens as the oracle ----------------------------------------------------------------------
tl_only = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("transformer_lens") is None,
    reason="optional oracle: transformer_lens is not installed (see docs/migrating-from-transformer-lens.md)",
)


@tl_only
@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])
def test_process_weights_in_place_matches_transformer_lens(family):
    from tests.compat._tl import tl_and_lens

    tl_model, model = tl_and_lens(family)
    tokens = tokens_for(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl_model.process_weights_()
        model.process_weights_()
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), tl_model(tokens), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.W_U, tl_model.W_U, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.W_out, tl_model.W_out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.b_O, tl_model.b_O, atol=1e-5, rtol=1e-4)


@tl_only
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_composition_scores_and_per_layer_circuits_match_transformer_lens(family):
    from tests.compat._tl import tl_and_lens

    tl_model, model = tl_and_lens(family)  # unprocessed on both sides
    for mode in ("Q", "K", "V"):
        torch.testing.assert_close(
            model.all_composition_scores(mode), tl_model.all_composition_scores(mode), atol=1e-5, rtol=1e-4
        )
    for block, tl_block in zip(model.blocks, tl_model.blocks):
        torch.testing.assert_close(block.attn.QK.AB, tl_block.attn.QK.AB, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(block.attn.OV.AB, tl_block.attn.OV.AB, atol=1e-5, rtol=1e-4)


@tl_only
def test_to_single_str_token_matches_transformer_lens():
    from tests.compat._tl import tl_and_lens_gpt2

    tl_model, model = tl_and_lens_gpt2()
    for token in range(0, model.cfg.d_vocab, 7):
        assert model.to_single_str_token(token) == tl_model.to_single_str_token(token)


# -- TransformerLens's state-dict steps -------------------------------------------------------------------
STATE_DICT_STEPS = {
    "fold_layer_norm": "fold_ln",
    "center_writing_weights": "center_writing_weights",
    "center_unembed": "center_unembed",
    "fold_value_biases": "fold_value_biases",
    "refactor_factored_attn_matrices": "refactor_factored_attn_matrices",
}


@pytest.mark.parametrize("method", sorted(STATE_DICT_STEPS))
def test_state_dict_steps_process_the_given_state_dict_and_leave_the_model_alone(method):
    model, source = tiny_model("gpt2", seed=1), tiny_model("gpt2", seed=2)
    kept, cfg_before = copy.deepcopy(model), model.cfg.to_dict()
    expected = copy.deepcopy(source).process_weights(**{STATE_DICT_STEPS[method]: True}).state_dict()
    got = getattr(model, method)(source.state_dict())
    assert got.keys() == expected.keys()
    for key in got:
        torch.testing.assert_close(got[key], expected[key], atol=0, rtol=0, msg=key)
    assert_same_state(model, kept)
    assert model.cfg.to_dict() == cfg_before
    assert all(block.cfg is model.cfg for block in model.blocks)


def test_state_dict_steps_load_back_into_a_processed_model():
    model = tiny_model("gpt2", seed=1)
    tokens = tokens_for(model)
    before = log_probs(model, tokens)
    kept = copy.deepcopy(model)
    # Chained as TransformerLens's loading does: folding creates biases and unties W_U, the next steps follow.
    state = model.fold_value_biases(model.center_unembed(model.fold_layer_norm(model.state_dict())))
    assert_same_state(model, kept)
    target = copy.deepcopy(model).process_weights(fold_ln=True)  # the structure the folded dict needs
    target.load_state_dict(state)
    torch.testing.assert_close(log_probs(target, tokens), before, atol=1e-4, rtol=0)
    expected = copy.deepcopy(model).process_weights(fold_ln=True, center_unembed=True, fold_value_biases=True)
    assert_same_state(target, expected)


def test_state_dict_steps_refuse_keys_the_model_has_no_place_for():
    model = tiny_model("gpt2")
    state = model.state_dict()
    with pytest.raises(ValueError, match="'blocks.0.attn.nope'"):
        model.center_unembed({**state, "blocks.0.attn.nope": torch.zeros(3)})
    with pytest.raises(ValueError, match="'blocks.9.attn.qkv_bias'"):
        model.center_unembed({**state, "blocks.9.attn.qkv_bias": torch.zeros(3)})


def test_state_dict_steps_refuse_what_the_architecture_cannot_honour():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="center_writing_weights needs LayerNorm"):
        model.center_writing_weights(model.state_dict())
    with pytest.raises(ValueError, match="rotary"):
        model.refactor_factored_attn_matrices(model.state_dict())
    gpt2 = tiny_model("gpt2")
    with pytest.raises(ValueError, match="fold_biases=False"):
        gpt2.fold_layer_norm(gpt2.state_dict(), fold_biases=False)
    with pytest.raises(TypeError, match="dict"):
        gpt2.center_unembed(list(gpt2.state_dict().items()))
    sd = model.fold_layer_norm(model.state_dict(), fold_biases=False, center_weights=False)  # RMS: as TL
    assert torch.equal(sd["blocks.0.ln1.w"], torch.ones_like(sd["blocks.0.ln1.w"]))


# -- TransformerLens's forward pieces ---------------------------------------------------------------------
def test_get_pos_offset_is_the_cache_offset():
    from lens.generation import KVCache

    model = tiny_model("gpt2")
    assert model.get_pos_offset(None, 2) == 0
    cache = KVCache.for_model(model, batch=2, max_len=16)
    model(tokens_for(model, batch=2, pos=5), past_kv_cache=cache)
    assert model.get_pos_offset(cache, 2) == 5
    with pytest.raises(ValueError, match="batch=2, but batch_size=3"):
        model.get_pos_offset(cache, 3)
    with pytest.raises(TypeError, match="lens KVCache"):
        model.get_pos_offset([("k", "v")], 2)


def test_get_residual_is_the_forward_residual_without_padding():
    model = tiny_model("gpt2")
    toks = tokens_for(model)
    embed = model.hook_embed(model.embed(toks))
    resid, short = model.get_residual(embed, 0)
    assert short is None
    torch.testing.assert_close(resid, model.input_to_embed(toks)[0], atol=0, rtol=0)
    later = model.get_residual(embed, 3, return_shortformer_pos_embed=False)
    torch.testing.assert_close(later, embed + model.W_pos[3 : 3 + toks.shape[1]], atol=0, rtol=0)
    rotary = tiny_model("llama")
    e = rotary.embed(tokens_for(rotary))
    assert rotary.get_residual(e, 0)[0] is e  # rotary: no positional embedding in the residual


def test_get_residual_with_padding_counts_real_tokens_and_zeroes_padding():
    model = tiny_model("gpt2")
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    embed = torch.randn(2, 5, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    seen = []
    with model.hooks(fwd_hooks=[("hook_pos_embed", lambda x, hook: seen.append(x.clone()))]):
        resid, _ = model.get_residual(embed, 0, attention_mask=mask)
    expected = embed.clone()
    expected[0, 2:] += model.W_pos[0:3]
    expected[1] += model.W_pos[0:5]
    torch.testing.assert_close(resid, expected, atol=1e-6, rtol=0)
    assert len(seen) == 1 and seen[0][0, :2].abs().sum() == 0
    cached = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])  # two cached positions, two new
    step, _ = model.get_residual(embed[:, :2], 2, attention_mask=cached)
    torch.testing.assert_close(step[0], embed[0, :2] + model.W_pos[1:3], atol=1e-6, rtol=0)
    torch.testing.assert_close(step[1], embed[1, :2] + model.W_pos[2:4], atol=1e-6, rtol=0)


def test_get_residual_rejects_bad_input():
    model = tiny_model("gpt2")
    embed = torch.zeros(1, 4, model.cfg.d_model)
    with pytest.raises(ValueError, match="embed must be"):
        model.get_residual(torch.zeros(4, model.cfg.d_model), 0)
    with pytest.raises(ValueError, match="pos_offset must be an int >= 0"):
        model.get_residual(embed, -1)
    with pytest.raises(ValueError, match="n_ctx is 64"):
        model.get_residual(embed, 62)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model.get_residual(embed, 0, attention_mask=torch.ones(1, 3))


@tl_only
def test_get_residual_and_pos_offset_match_transformer_lens():
    from tests.compat._tl import tl_and_lens_gpt2

    tl_model, model = tl_and_lens_gpt2()
    embed = torch.randn(2, 5, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    for offset, mask in [(0, None), (3, None), (0, torch.tensor([[0, 0, 1, 1, 1], [1] * 5])),
                         (2, torch.tensor([[0, 1, 1, 1, 1, 1, 1], [1] * 7]))]:  # fmt: skip
        expected, _ = tl_model.get_residual(embed, offset, attention_mask=mask)
        got, _ = model.get_residual(embed, offset, attention_mask=mask)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert model.get_pos_offset(None, 2) == tl_model.get_pos_offset(None, 2) == 0
