"""TransformerLens 2.x as the oracle: the same tiny random-weight model in lens and in TransformerLens.

Both models come from one ``transformers`` model (``tests/compat/_tl.py``): TransformerLens converts it with
its own weight-conversion functions, lens with ``lens.loading.from_hf_model``. Every comparison runs the
same call on identical inputs: logits and loss (processing off, and fold_ln/center_*/fold_value_biases on
both sides), every cached hook, hook edits, greedy generation, stacked weights, QK/OV factored matrices and
the ActivationCache analysis methods. Differences that are by design are asserted as differences (the exact
relation), so a change on either side shows up here and in docs/migrating-from-transformer-lens.md.

Run: ``PYTHONPATH=. .venv-tl/bin/python -m pytest tests/compat/test_tl_oracle.py -rP`` (``-rP`` prints the
names TransformerLens has and lens lacks). Skipped where ``transformer_lens`` is not installed.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import torch

tl = pytest.importorskip(
    "transformer_lens",
    reason="TransformerLens is an optional oracle; install transformer_lens (2.x) in a separate venv to compare",
)

import lens  # noqa: E402
from tests.compat._tl import (  # noqa: E402
    FAMILIES,
    TL_VERSION,
    hf_for,
    lens_from_hf,
    tl_and_lens,
    tl_from_hf,
    tokens_for,
)

ATOL = 1e-4
LN_FAMILIES = ("gpt2", "neox")
DOC = Path(__file__).resolve().parents[2] / "docs" / "migrating-from-transformer-lens.md"
OPTIONAL_HOOKS = {  # TransformerLens setter -> the hook names it turns on
    "set_use_attn_result": ("attn.hook_result",),
    "set_use_split_qkv_input": ("hook_q_input", "hook_k_input", "hook_v_input"),
    "set_use_hook_mlp_in": ("hook_mlp_in",),
    "set_use_attn_in": ("hook_attn_in",),
}


def processing_for(family: str, on: bool) -> dict[str, bool]:
    """All of TransformerLens's default processing that the family supports (center_writing_weights needs LN)."""
    if not on:
        return {}
    return dict(fold_ln=True, center_writing_weights=family in LN_FAMILIES, center_unembed=True, fold_value_biases=True)


@functools.cache
def models(family: str, processed: bool):
    return tl_and_lens(family, processing=processing_for(family, processed))


CASES = [pytest.param(f, p, id=f"{f}-{'processed' if p else 'raw'}") for f in FAMILIES for p in (False, True)]


def close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=1e-4)


# -- forward -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family,processed", CASES)
def test_logits_and_loss(family, processed):
    tl_model, model = models(family, processed)
    tokens = tokens_for(model)
    close(tl_model(tokens), model(tokens))
    close(tl_model(tokens, return_type="loss"), model(tokens, return_type="loss"))
    per_token_tl = tl_model(tokens, return_type="loss", loss_per_token=True)
    close(per_token_tl, model(tokens, return_type="loss", loss_per_token=True))
    logits_tl, loss_tl = tl_model(tokens, return_type="both")
    logits, loss = model(tokens, return_type="both")
    close(logits_tl, logits)
    close(loss_tl, loss)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_processing_preserves_log_probs_on_both_sides(family):
    raw_tl, raw = models(family, False)
    proc_tl, proc = models(family, True)
    tokens = tokens_for(raw)
    close(raw_tl(tokens).log_softmax(-1), proc(tokens).log_softmax(-1))
    close(proc_tl(tokens).log_softmax(-1), raw(tokens).log_softmax(-1))


def test_center_writing_weights_without_layernorm_raises_where_tl_skips(caplog):
    """TransformerLens logs a warning and skips; lens refuses (ValueError) before touching the weights."""
    hf = hf_for("llama")
    tl_model = tl_from_hf("llama", hf, center_writing_weights=True)
    assert any("center" in r.getMessage() for r in caplog.records)
    model = lens_from_hf(hf)
    with pytest.raises(ValueError, match="center_writing_weights"):
        model.process_weights(center_writing_weights=True)
    tokens = tokens_for(model)
    close(tl_model(tokens), model(tokens))  # TL's skip leaves the weights as they were, as lens's refusal does


# -- hooks -------------------------------------------------------------------------------------------
def _known_difference(family: str, processed: bool, name: str) -> bool:
    """RMSNorm ``hook_normalized``: TransformerLens hooks x / rms before the weight, lens after it (unfolded)."""
    return family not in LN_FAMILIES and not processed and name.endswith("hook_normalized")


@pytest.mark.parametrize("family,processed", CASES)
def test_every_cached_hook_matches(family, processed):
    tl_model, model = models(family, processed)
    tokens = tokens_for(model)
    _, tl_cache = tl_model.run_with_cache(tokens)
    _, cache = model.run_with_cache(tokens)
    assert sorted(cache.keys()) == sorted(tl_cache.keys())
    for name in tl_cache.keys():
        if _known_difference(family, processed, name):
            norm = name.rsplit(".", 1)[0]
            weight = tl_model.get_submodule(norm).w
            close(tl_cache[name] * weight, cache[name])
        else:
            close(tl_cache[name], cache[name])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_optional_hooks_match_when_enabled(family):
    """Each ``set_use_*`` hook, enabled on both sides, has TransformerLens's values."""
    hf = hf_for(family)
    tokens = tokens_for(lens_from_hf(hf))
    for setter, suffixes in OPTIONAL_HOOKS.items():
        tl_model = tl_from_hf(family, hf)
        flag = setter.removeprefix("set_")
        model = lens.loading.from_hf_model(hf, model_class=lens.HookedTransformer, **{flag: True}).eval()
        _, cache = model.run_with_cache(tokens)
        if setter == "set_use_attn_in" and tl_model.cfg.n_key_value_heads is not None:
            # TransformerLens refuses attn_in with grouped-query attention; lens gives each query head's input,
            # which is TransformerLens's hook_q_input.
            with pytest.raises(AssertionError):
                tl_model.set_use_attn_in(True)
            tl_model.set_use_split_qkv_input(True)
            _, tl_cache = tl_model.run_with_cache(tokens)
            for layer in range(model.cfg.n_layers):
                close(tl_cache[f"blocks.{layer}.hook_q_input"], cache[f"blocks.{layer}.hook_attn_in"])
            continue
        getattr(tl_model, setter)(True)
        _, tl_cache = tl_model.run_with_cache(tokens)
        names = [k for k in tl_cache.keys() if k.endswith(suffixes)]
        assert len(names) == 2 * len(suffixes), names
        for name in names:
            close(tl_cache[name], cache[name])
        close(tl_model(tokens), model(tokens))


def test_hook_points_tl_has_and_lens_lacks_are_the_optional_ones():
    """lens builds the ``set_use_*`` hook points only when enabled; TransformerLens always has them (inactive)."""
    tl_model, model = models("gpt2", False)
    missing = sorted(set(tl_model.hook_dict) - set(model.hook_dict))
    print(f"TransformerLens {TL_VERSION} hook points lens lacks (default config):", missing)
    suffixes = tuple(s for group in OPTIONAL_HOOKS.values() for s in group)
    assert all(name.endswith(suffixes) for name in missing), missing
    assert set(model.hook_dict) <= set(tl_model.hook_dict)


def _zero_head(value, hook, head):
    value[:, :, head] = 0.0
    return value


def _add_direction(resid, hook, direction):
    return resid + direction


@pytest.mark.parametrize("family", list(FAMILIES))
def test_run_with_hooks_edits(family):
    tl_model, model = models(family, False)
    tokens = tokens_for(model)
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(3))
    fwd_hooks = [
        ("blocks.0.attn.hook_z", functools.partial(_zero_head, head=1)),
        ("blocks.1.hook_resid_pre", functools.partial(_add_direction, direction=direction)),
        ("blocks.1.mlp.hook_post", lambda act, hook: act * 0.5),
        ("blocks.1.attn.hook_pattern", lambda p, hook: p.flip(-1).tril()),
    ]
    with torch.no_grad():
        edited_tl = tl_model.run_with_hooks(tokens, fwd_hooks=fwd_hooks)
        edited = model.run_with_hooks(tokens, fwd_hooks=fwd_hooks)
    close(edited_tl, edited)
    assert not torch.allclose(edited, model(tokens), atol=1e-3)  # the edits changed something
    close(tl_model(tokens), model(tokens))  # and were removed on both sides


def test_run_with_hooks_name_filter_function_and_backward_hooks():
    tl_model, model = models("gpt2", False)
    tokens = tokens_for(model)
    grads_tl, grads = {}, {}

    def saver(store):
        def hook(grad, hook):
            store[hook.name] = grad.detach().clone()

        return hook

    is_resid = lambda name: name.endswith("hook_resid_post")
    # With the default reset_hooks_end=True, TransformerLens warns that backward hooks are removed, yet torch
    # already attached them to the forward's graph, so they still fire on the later backward; lens removes
    # them from the graph too: nothing fires.
    tl_model.run_with_hooks(tokens, return_type="loss", bwd_hooks=[(is_resid, saver(grads_tl))]).backward()
    assert sorted(grads_tl) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    model.run_with_hooks(tokens, return_type="loss", bwd_hooks=[(is_resid, saver(grads))]).backward()
    assert grads == {}
    grads_tl.clear()
    for m, store in ((tl_model, grads_tl), (model, grads)):
        loss = m.run_with_hooks(tokens, return_type="loss", bwd_hooks=[(is_resid, saver(store))], reset_hooks_end=False)
        loss.backward()
        m.reset_hooks()
    assert sorted(grads) == sorted(grads_tl) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    for name in grads:
        close(grads_tl[name], grads[name], atol=1e-5)
    tl_model.zero_grad(set_to_none=True)
    model.zero_grad(set_to_none=True)


# -- generation --------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_generate_greedy_tokens(family):
    tl_model, model = models(family, False)
    prompt = tokens_for(model, batch=2, pos=6, seed=5)
    expected = tl_model.generate(prompt, max_new_tokens=8, do_sample=False, stop_at_eos=False, verbose=False)
    got = model.generate(prompt, max_new_tokens=8, do_sample=False, stop_at_eos=False)
    assert torch.equal(got, expected)


# -- weights -----------------------------------------------------------------------------------------
WEIGHTS = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "W_in", "W_out", "b_in", "b_out", "W_U", "b_U")


@pytest.mark.parametrize("family,processed", CASES)
def test_stacked_weights(family, processed):
    tl_model, model = models(family, processed)
    for name in WEIGHTS:
        close(getattr(tl_model, name), getattr(model, name), atol=1e-6)
    if model.cfg.gated_mlp:
        close(tl_model.W_gate, model.W_gate, atol=1e-6)
    if family == "gemma":  # TransformerLens folds Gemma's sqrt(d_model) embedding scale into W_E
        close(tl_model.W_E, model.W_E * model.cfg.d_model**0.5, atol=1e-5)
    else:
        close(tl_model.W_E, model.W_E, atol=1e-6)
    if family == "gpt2":
        close(tl_model.W_pos, model.W_pos, atol=1e-6)
        close(tl_model.W_E_pos, model.W_E_pos, atol=1e-6)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_qk_ov_factored_matrices(family):
    tl_model, model = models(family, True)
    for kind in ("QK", "OV"):
        fm_tl, fm = getattr(tl_model, kind), getattr(model, kind)
        close(fm_tl.AB, fm.AB, atol=1e-4)
        close(fm_tl.BA, fm.BA, atol=1e-4)
        close(fm_tl.norm(), fm.norm(), atol=1e-4)
        head_tl, head = fm_tl[1, 2], fm[1, 2]
        close(head_tl.AB, head.AB, atol=1e-4)
        close(head_tl.S, head.S, atol=1e-4)
        ev_tl, ev = head_tl.eigenvalues, head.eigenvalues
        key = lambda e: sorted(e.tolist(), key=lambda z: (round(z.real, 4), round(z.imag, 4)))
        for a, b in zip(key(ev_tl), key(ev)):
            assert abs(a - b) < 1e-3, (ev_tl, ev)
        close(head_tl.get_corner(3), head.get_corner(3), atol=1e-4)


def test_factored_matrix_svd_returns_v_as_transformer_lens():
    tl_model, model = models("gpt2", True)
    U_tl, S_tl, V_tl = tl_model.OV[0, 1].svd()
    U, S, V = model.OV[0, 1].svd()
    close(S_tl, S)
    assert V.shape == V_tl.shape
    close(U @ torch.diag_embed(S) @ V.transpose(-1, -2), model.OV[0, 1].AB)
    k = int((S_tl > 1e-4).sum())  # singular vectors of non-zero singular values agree up to sign
    close((V_tl[:, :k] * V[:, :k]).sum(0).abs(), torch.ones(k), atol=1e-3)
    close((U_tl[:, :k] * U[:, :k]).sum(0).abs(), torch.ones(k), atol=1e-3)


# -- ActivationCache analysis ------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("apply_ln", [False, True])
def test_cache_residual_analysis(family, apply_ln):
    tl_model, model = models(family, True)
    tokens = tokens_for(model)
    _, tl_cache = tl_model.run_with_cache(tokens)
    _, cache = model.run_with_cache(tokens)

    def same(method, **kwargs):
        expected = getattr(tl_cache, method)(**kwargs)
        got = getattr(cache, method)(**kwargs)
        if kwargs.get("return_labels"):
            assert got[1] == expected[1], method
            expected, got = expected[0], got[0]
        close(expected, got, atol=2e-4)
        return got

    incl_mid = not model.cfg.parallel_attn_mlp  # TransformerLens: KeyError (no hook_resid_mid) on parallel blocks
    accumulated = same("accumulated_resid", incl_mid=incl_mid, apply_ln=apply_ln, return_labels=True)
    same("accumulated_resid", layer=1, apply_ln=apply_ln, return_labels=True)
    same("accumulated_resid", layer=-1, pos_slice=-1, apply_ln=apply_ln)
    decomposed = same("decompose_resid", apply_ln=apply_ln, return_labels=True)
    same("decompose_resid", layer=1, mode="attn", apply_ln=apply_ln, return_labels=True)
    heads = same("stack_head_results", layer=-1, apply_ln=apply_ln, return_labels=True)
    same("stack_head_results", layer=1, pos_slice=-1, apply_ln=apply_ln)
    same("stack_neuron_results", layer=1, apply_ln=apply_ln, return_labels=True)
    same("get_full_resid_decomposition", expand_neurons=False, apply_ln=apply_ln, return_labels=True)
    same("get_full_resid_decomposition", expand_neurons=True, apply_ln=apply_ln, return_labels=True)
    answer, wrong = tokens[:, -1], tokens[:, 0]
    for stack in (accumulated, decomposed, heads):
        last = stack[:, :, -1]  # [component, batch, d_model]: the stack at the answer position
        expected = tl_cache.logit_attrs(last, answer, wrong, pos_slice=-1)
        close(expected, cache.logit_attrs(last, answer, wrong, pos_slice=-1), atol=2e-4)
        close(
            tl_cache.logit_attrs(last, answer, pos_slice=-1), cache.logit_attrs(last, answer, pos_slice=-1), atol=2e-4
        )
    ln_stack_tl = tl_cache.apply_ln_to_stack(decomposed[:, :, -1], layer=1, pos_slice=-1)
    close(ln_stack_tl, cache.apply_ln_to_stack(decomposed[:, :, -1], layer=1, pos_slice=-1), atol=2e-4)
    close(tl_cache.apply_ln_to_stack(decomposed, layer=1), cache.apply_ln_to_stack(decomposed, layer=1), atol=2e-4)


def test_stack_head_results_remainder():
    tl_model, model = models("gpt2", True)
    tokens = tokens_for(model)
    _, tl_cache = tl_model.run_with_cache(tokens)
    _, cache = model.run_with_cache(tokens)
    expected, labels_tl = tl_cache.stack_head_results(layer=1, incl_remainder=True, return_labels=True)
    got, labels = cache.stack_head_results(layer=1, incl_remainder=True, return_labels=True)
    assert labels == labels_tl
    close(expected, got, atol=2e-4)


def test_tokens_to_residual_directions_and_accumulated_bias():
    tl_model, model = models("gpt2", True)
    tokens = tokens_for(model)
    close(tl_model.tokens_to_residual_directions(tokens), model.tokens_to_residual_directions(tokens))
    close(tl_model.tokens_to_residual_directions(5), model.tokens_to_residual_directions(5))
    for layer in range(model.cfg.n_layers + 1):
        close(tl_model.accumulated_bias(layer), model.accumulated_bias(layer))
        close(
            tl_model.accumulated_bias(layer, include_mlp_biases=False),
            model.accumulated_bias(layer, include_mlp_biases=False),
        )
        if layer < model.cfg.n_layers:
            close(tl_model.accumulated_bias(layer, mlp_input=True), model.accumulated_bias(layer, mlp_input=True))
    assert model.all_head_labels() == tl_model.all_head_labels()


# -- public names ------------------------------------------------------------------------------------
def _missing(tl_obj, lens_obj) -> list[str]:
    return sorted(n for n in dir(tl_obj) if not n.startswith("_") and n not in dir(lens_obj))


def public_names_lens_lacks() -> dict[str, list[str]]:
    """Public names of TransformerLens's user-facing classes and modules that the lens counterpart lacks."""
    tl_model, model = models("gpt2", False)
    _, tl_cache = tl_model.run_with_cache(tokens_for(model))
    _, cache = model.run_with_cache(tokens_for(model))
    torch_module = set(dir(torch.nn.Module))
    return {
        "HookedTransformer": [n for n in _missing(tl_model, model) if n not in torch_module],
        "ActivationCache": _missing(tl_cache, cache),
        "FactoredMatrix": _missing(tl_model.OV, model.OV),
        "HookPoint": [n for n in _missing(tl_model.blocks[0].hook_resid_pre, model.blocks[0].hook_resid_pre)],
        "transformer_lens": _missing(tl, lens),  # the package's top-level names
        "patching": [  # functions TransformerLens's patching module defines
            n
            for n in _missing(tl.patching, lens.patching)
            if getattr(getattr(tl.patching, n), "__module__", "") == tl.patching.__name__
        ],
        "utils": [  # functions and classes TransformerLens's utils defines (not its imports)
            n
            for n in _missing(tl.utils, lens.utils)
            if getattr(getattr(tl.utils, n), "__module__", "") == tl.utils.__name__
        ],
    }


def test_names_tl_has_and_lens_lacks_are_listed_in_the_migration_doc():
    """Every public TransformerLens name lens lacks is named in the migration doc (so users learn it there)."""
    doc = DOC.read_text()
    section = doc.split("## Names TransformerLens has and lens lacks", 1)[-1]
    undocumented = {}
    for owner, names in public_names_lens_lacks().items():
        print(f"TransformerLens {TL_VERSION} {owner} names lens lacks: {names}")
        absent = [n for n in names if not re.search(rf"`{re.escape(n)}`", section)]
        if absent:
            undocumented[owner] = absent
    assert not undocumented, f"add to docs/migrating-from-transformer-lens.md: {undocumented}"
