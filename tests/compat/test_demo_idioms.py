"""The idioms of TransformerLens's Main_Demo, Exploratory_Analysis_Demo and Activation_Patching demos, on lens.

Each idiom is a small function over a namespace (``ns.model``, ``ns.utils``, ``ns.patching``,
``ns.FactoredMatrix``) written the way the notebooks write it. It runs on a tiny lens model (a random
GPT-2 with a word-level tokenizer, ``tests/compat/_tl.py``) and is checked against exact math or a
property; where ``transformer_lens`` is installed the same function also runs on TransformerLens with
identical weights and the results must agree (``oracle``).
"""

from __future__ import annotations

import functools
import importlib.util
from types import SimpleNamespace

import einops
import pytest
import torch

import lens
import lens.plot
import lens.utils
from lens import FactoredMatrix
from lens.tools import patching
from tests.compat._tl import lens_model

HAS_TL = importlib.util.find_spec("transformer_lens") is not None
# The demos load with TransformerLens's default processing; the residual-stream analysis assumes it.
PROCESSING = dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)
PROMPT = "when John and Mary went to the store , John gave a drink to"
CORRUPT = "when John and Mary went to the store , Mary gave a drink to"


@functools.cache
def lens_ns() -> SimpleNamespace:
    model = lens_model("gpt2", **PROCESSING)
    return SimpleNamespace(model=model, utils=lens.utils, patching=patching, FactoredMatrix=FactoredMatrix)


@functools.cache
def tl_ns() -> SimpleNamespace | None:
    if not HAS_TL:
        return None
    import transformer_lens as tl
    import transformer_lens.patching as tl_patching

    from tests.compat._tl import tl_and_lens

    model, _ = tl_and_lens("gpt2", processing=PROCESSING)
    return SimpleNamespace(model=model, utils=tl.utils, patching=tl_patching, FactoredMatrix=tl.FactoredMatrix)


def _same(a, b, path="result"):
    if type(a).__module__ == "numpy":
        a, b = torch.as_tensor(a), torch.as_tensor(b)
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.shape == b.shape, (path, a.shape, b.shape)
        if a.is_floating_point() or a.is_complex():
            torch.testing.assert_close(b, a, atol=2e-4, rtol=1e-4, msg=path)
        else:
            assert torch.equal(a, b), path
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert abs(a - b) < 2e-4 * max(1.0, abs(a)), (path, a, b)
    else:
        assert a == b, (path, a, b)


def oracle(idiom):
    """Run ``idiom(ns)`` on lens; with TransformerLens installed, also on it, and compare. Returns lens's result."""
    got = idiom(lens_ns())
    tl = tl_ns()
    if tl is not None:
        _same(idiom(tl), got)
    return got


@pytest.fixture
def ns():
    return lens_ns()


# -- Main_Demo: running the model and the cache ------------------------------------------------------------
def test_loss_of_a_string(ns):
    loss = oracle(lambda n: n.model(PROMPT, return_type="loss"))
    tokens = ns.model.to_tokens(PROMPT)
    logits = ns.model(tokens)
    expected = -logits.log_softmax(-1)[0, :-1].gather(-1, tokens[0, 1:, None]).mean()
    torch.testing.assert_close(loss, expected)


def test_run_with_cache_remove_batch_dim(ns):
    logits, cache = ns.model.run_with_cache(PROMPT, remove_batch_dim=True)
    assert cache["pattern", 0].shape == (ns.model.cfg.n_heads, logits.shape[1], logits.shape[1])
    oracle(lambda n: n.model.run_with_cache(PROMPT, remove_batch_dim=True)[1]["pattern", 0, "attn"])


@pytest.mark.parametrize(
    "key,full",
    [
        (("pattern", 0, "attn"), "blocks.0.attn.hook_pattern"),
        (("pattern", 1), "blocks.1.attn.hook_pattern"),
        (("attn_scores", 0), "blocks.0.attn.hook_attn_scores"),
        (("resid_pre", 1), "blocks.1.hook_resid_pre"),
        (("resid_post", -1), "blocks.1.hook_resid_post"),
        (("q", 0), "blocks.0.attn.hook_q"),
        (("z", 1, "attn"), "blocks.1.attn.hook_z"),
        (("post", 0), "blocks.0.mlp.hook_post"),
        (("scale", 0, "ln1"), "blocks.0.ln1.hook_scale"),
        (("normalized", 1, "ln2"), "blocks.1.ln2.hook_normalized"),
        ("embed", "hook_embed"),
        ("scale1ln1", "blocks.1.ln1.hook_scale"),
        ("ln_final.hook_normalized", "ln_final.hook_normalized"),
    ],
)
def test_cache_indexing_forms(ns, key, full):
    _, cache = ns.model.run_with_cache(PROMPT)
    assert cache[key] is cache[full] or torch.equal(cache[key], cache[full])
    oracle(lambda n: n.model.run_with_cache(PROMPT)[1][key])


def test_get_act_name_forms(ns):
    names = oracle(
        lambda n: [
            n.utils.get_act_name("v", 0),
            n.utils.get_act_name("pattern", 1, "attn"),
            n.utils.get_act_name("resid_pre", 1),
            n.utils.get_act_name("scale", 0, "ln1"),
            n.utils.get_act_name("k6"),
            n.utils.get_act_name("scale4ln1"),
        ]
    )
    assert names[:3] == ["blocks.0.attn.hook_v", "blocks.1.attn.hook_pattern", "blocks.1.hook_resid_pre"]


def test_to_str_tokens_to_tokens_to_string(ns):
    strs = oracle(lambda n: n.model.to_str_tokens(PROMPT))
    assert "".join(f" {s}" for s in strs).strip() == PROMPT
    tokens = oracle(lambda n: n.model.to_tokens(PROMPT, prepend_bos=True))
    assert tokens[0, 0] == ns.model.tokenizer.bos_token_id
    assert oracle(lambda n: n.model.to_string(n.model.to_tokens(PROMPT, prepend_bos=False)[0])) == PROMPT
    single = oracle(lambda n: n.model.to_single_token(" Mary"))
    assert ns.model.to_string(torch.tensor([single])) == "Mary"


def test_to_string_of_one_int(ns):
    single = ns.model.to_single_token(" Mary")
    assert oracle(lambda n: n.model.to_string(single)) == "Mary"


def test_tokenizer_hf_like_calls(ns):
    tok = ns.model.tokenizer
    ids = oracle(lambda n: n.model.tokenizer.encode(PROMPT))
    assert oracle(lambda n: n.model.tokenizer.decode(ids)) == PROMPT
    assert oracle(lambda n: n.model.tokenizer.batch_decode([ids[:2], ids[2:4]])) == ["when John", "and Mary"]
    batch = oracle(
        lambda n: n.model.tokenizer(["the cat", "a big dog"], padding=True, return_tensors="pt")["input_ids"]
    )
    assert batch.shape == (2, 3)
    info = oracle(
        lambda n: [n.model.tokenizer.pad_token_id, n.model.tokenizer.eos_token_id, n.model.tokenizer.vocab_size]
    )
    assert info == [95, 95, 96]
    assert tok.padding_side in ("left", "right")


# -- hooks ----------------------------------------------------------------------------------------------
def _head_ablation_hook(value, hook, head_index_to_ablate):
    value[:, :, head_index_to_ablate, :] = 0.0
    return value


def test_head_ablation_in_place_with_grad_enabled(ns):
    """Main_Demo: ``value[:, :, head, :] = 0.`` on hook_v with gradients on (no torch.no_grad())."""

    def idiom(n):
        hook = functools.partial(_head_ablation_hook, head_index_to_ablate=3)
        return n.model.run_with_hooks(PROMPT, return_type="loss", fwd_hooks=[(n.utils.get_act_name("v", 0), hook)])

    ablated = oracle(idiom)
    assert ablated.requires_grad
    ablated.backward()  # the graph through the in-place edit is valid
    ns.model.zero_grad(set_to_none=True)

    def reference(value, hook):  # the same ablation as a pure function
        return value * (torch.arange(value.shape[2]) != 3)[:, None]

    expected = ns.model.run_with_hooks(PROMPT, return_type="loss", fwd_hooks=[("blocks.0.attn.hook_v", reference)])
    torch.testing.assert_close(ablated, expected)


def test_hook_layer_and_name_inside_hooks(ns):
    seen = []

    def hook(act, hook):
        seen.append((hook.name, hook.layer()))

    ns.model.run_with_hooks(PROMPT, return_type=None, fwd_hooks=[(lambda name: name.endswith("hook_z"), hook)])
    assert seen == [("blocks.0.attn.hook_z", 0), ("blocks.1.attn.hook_z", 1)]


def test_induction_score_with_names_filter_function(ns):
    """Main_Demo: repeated random tokens, a names_filter function, ``pattern.diagonal(offset=1 - seq_len)``."""
    seq_len = 10
    gen = torch.Generator().manual_seed(0)
    rand = torch.randint(0, 94, (4, seq_len), generator=gen)
    repeated = torch.cat([torch.full((4, 1), 95), rand, rand], dim=1)

    def idiom(n):
        scores = torch.zeros(n.model.cfg.n_layers, n.model.cfg.n_heads)

        def induction_score_hook(pattern, hook):
            stripe = pattern.diagonal(offset=1 - seq_len, dim1=-2, dim2=-1)
            scores[hook.layer(), :] = einops.reduce(stripe, "batch head pos -> head", "mean")

        n.model.run_with_hooks(
            repeated, return_type=None, fwd_hooks=[(lambda name: name.endswith("pattern"), induction_score_hook)]
        )
        return scores

    scores = oracle(idiom)
    _, cache = ns.model.run_with_cache(repeated)
    stripe = cache["pattern", 1][:, 2].diagonal(offset=1 - seq_len, dim1=-2, dim2=-1)
    torch.testing.assert_close(scores[1, 2], stripe.mean())


def test_hooks_context_manager_and_reset_hooks(ns):
    clean = ns.model(PROMPT)
    zero = lambda act, hook: torch.zeros_like(act)
    with ns.model.hooks(fwd_hooks=[("blocks.1.hook_mlp_out", zero)]):
        hooked = ns.model(PROMPT)
    assert not torch.allclose(hooked, clean)
    ns.model.add_hook("blocks.1.hook_mlp_out", zero)
    torch.testing.assert_close(ns.model(PROMPT), hooked)
    ns.model.reset_hooks()
    torch.testing.assert_close(ns.model(PROMPT), clean)


# -- logit difference and residual decomposition (Exploratory_Analysis_Demo) -----------------------------------
def _answers(n):
    return torch.tensor([[n.model.to_single_token(" Mary"), n.model.to_single_token(" John")]])


def _logit_diff(logits, answer_tokens):
    final = logits[:, -1, :]
    answer_logits = final.gather(dim=-1, index=answer_tokens)
    return (answer_logits[:, 0] - answer_logits[:, 1]).mean()


def test_logit_difference(ns):
    diff = oracle(lambda n: _logit_diff(n.model(PROMPT), _answers(n)))
    logits = ns.model(PROMPT)[0, -1]
    torch.testing.assert_close(diff, logits[_answers(ns)[0, 0]] - logits[_answers(ns)[0, 1]])


def test_logit_diff_directions_through_final_ln(ns):
    """The residual at the last position, scaled by ln_final and dotted with W_U[:, a] - W_U[:, b]."""

    def idiom(n):
        logits, cache = n.model.run_with_cache(PROMPT)
        directions = n.model.tokens_to_residual_directions(_answers(n))
        logit_diff_directions = directions[:, 0] - directions[:, 1]
        final = cache["resid_post", -1][:, -1, :]
        scaled = cache.apply_ln_to_stack(final, layer=-1, pos_slice=-1)
        return (scaled * logit_diff_directions).sum(-1).mean(), _logit_diff(logits, _answers(n))

    via_residual, direct = oracle(idiom)
    a, b = _answers(ns)[0]
    bias = ns.model.b_U[a] - ns.model.b_U[b]  # fold_ln moved ln_final's bias into b_U
    torch.testing.assert_close(via_residual + bias, direct, atol=1e-4, rtol=1e-4)


def test_w_u_column_is_the_token_direction(ns):
    token = ns.model.to_single_token(" Mary")
    torch.testing.assert_close(ns.model.tokens_to_residual_directions(token), ns.model.W_U[:, token])
    oracle(lambda n: n.model.W_U[:, token])


@pytest.mark.parametrize(
    "method,kwargs",
    [
        ("accumulated_resid", dict(layer=-1, incl_mid=True, pos_slice=-1, return_labels=True)),
        ("decompose_resid", dict(layer=-1, pos_slice=-1, return_labels=True)),
        ("stack_head_results", dict(layer=-1, pos_slice=-1, return_labels=True)),
    ],
)
def test_residual_stacks_and_logit_attribution(ns, method, kwargs):
    def idiom(n):
        _, cache = n.model.run_with_cache(PROMPT)
        stack, labels = getattr(cache, method)(**kwargs)
        attrs = cache.logit_attrs(stack, _answers(n)[:, 0], _answers(n)[:, 1], pos_slice=-1)
        return stack, labels, attrs

    stack, labels, attrs = oracle(idiom)
    assert len(labels) == stack.shape[0] == attrs.shape[0]
    if method == "decompose_resid":  # the components sum to the final residual
        _, cache = ns.model.run_with_cache(PROMPT)
        torch.testing.assert_close(stack.sum(0), cache["resid_post", -1][:, -1], atol=1e-4, rtol=1e-4)


def test_per_head_logit_diffs_rearranged(ns):
    def idiom(n):
        _, cache = n.model.run_with_cache(PROMPT)
        per_head, _ = cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True)
        diffs = cache.logit_attrs(per_head, _answers(n)[:, 0], _answers(n)[:, 1], pos_slice=-1).mean(-1)
        return einops.rearrange(diffs, "(layer head) -> layer head", layer=n.model.cfg.n_layers)

    assert oracle(idiom).shape == (ns.model.cfg.n_layers, ns.model.cfg.n_heads)


def test_use_attn_result_after_construction(ns):
    def idiom(n):
        n.model.set_use_attn_result(True)
        try:
            _, cache = n.model.run_with_cache(PROMPT)
            return cache["result", 0]
        finally:
            n.model.set_use_attn_result(False)

    result = oracle(idiom)
    _, cache = ns.model.run_with_cache(PROMPT)
    torch.testing.assert_close(result.sum(-2) + ns.model.b_O[0], cache["attn_out", 0], atol=1e-5, rtol=1e-5)


# -- activation patching ---------------------------------------------------------------------------------
def _patch_residual_component(corrupted, hook, pos, clean_cache):
    corrupted[:, pos, :] = clean_cache[hook.name][:, pos, :]
    return corrupted


def _patch_head_vector(corrupted, hook, head_index, clean_cache):
    corrupted[:, :, head_index, :] = clean_cache[hook.name][:, :, head_index, :]
    return corrupted


def test_manual_residual_patching_loop(ns):
    def idiom(n):
        _, clean_cache = n.model.run_with_cache(PROMPT)
        corrupted = n.model.to_tokens(CORRUPT)
        out = torch.zeros(n.model.cfg.n_layers, corrupted.shape[1])
        for layer in range(n.model.cfg.n_layers):
            for pos in range(corrupted.shape[1]):
                hook = functools.partial(_patch_residual_component, pos=pos, clean_cache=clean_cache)
                logits = n.model.run_with_hooks(
                    corrupted, fwd_hooks=[(n.utils.get_act_name("resid_pre", layer), hook)], return_type="logits"
                )
                out[layer, pos] = _logit_diff(logits, _answers(n))
        return out

    result = oracle(idiom)
    clean_diff = _logit_diff(ns.model(PROMPT), _answers(ns))
    differs = (ns.model.to_tokens(PROMPT) != ns.model.to_tokens(CORRUPT))[0].nonzero()[0].item()
    # patching the whole differing position at layer 0 restores the clean run exactly
    torch.testing.assert_close(result[0, differs], clean_diff, atol=1e-4, rtol=1e-4)


def test_head_vector_patching(ns):
    def idiom(n):
        _, clean_cache = n.model.run_with_cache(PROMPT)
        hook = functools.partial(_patch_head_vector, head_index=1, clean_cache=clean_cache)
        return n.model.run_with_hooks(CORRUPT, fwd_hooks=[(n.utils.get_act_name("z", 1, "attn"), hook)])

    oracle(idiom)


def _ioi_metric(logits):
    model = lens_ns().model
    return logits[0, -1, model.to_single_token(" Mary")] - logits[0, -1, model.to_single_token(" John")]


@pytest.mark.parametrize(
    "fn",
    ["get_act_patch_resid_pre", "get_act_patch_attn_head_out_all_pos", "get_act_patch_block_every"],
)
def test_patching_module_helpers(ns, fn):
    def idiom(n):
        _, clean_cache = n.model.run_with_cache(PROMPT)
        return getattr(n.patching, fn)(n.model, n.model.to_tokens(CORRUPT), clean_cache, _ioi_metric)

    result = oracle(idiom)
    if fn == "get_act_patch_resid_pre":  # patching every position of layer 0 restores the clean metric
        diffs = ns.model.to_tokens(PROMPT) != ns.model.to_tokens(CORRUPT)
        pos = int(diffs[0].nonzero()[0])
        torch.testing.assert_close(result[0, pos], _ioi_metric(ns.model(PROMPT)), atol=1e-4, rtol=1e-4)


# -- generation ------------------------------------------------------------------------------------------
def test_generate_greedy_string(ns):
    text = oracle(lambda n: n.model.generate("the cat", max_new_tokens=5, do_sample=False, verbose=False))
    assert text.startswith("the cat") and len(text.split()) == 7


def test_generate_sampling_with_temperature_runs(ns):
    out = ns.model.generate("the cat", max_new_tokens=5, temperature=0.7, do_sample=True, seed=0)
    assert isinstance(out, str) and out.startswith("the cat")


# -- weights and FactoredMatrix ----------------------------------------------------------------------------
def test_weight_shapes(ns):
    shapes = oracle(
        lambda n: [tuple(n.model.W_Q.shape), tuple(n.model.blocks[0].attn.W_Q.shape), tuple(n.model.W_E.shape)]
    )
    cfg = ns.model.cfg
    assert shapes == [
        (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head),
        (cfg.n_heads, cfg.d_model, cfg.d_head),
        (cfg.d_vocab, cfg.d_model),
    ]


def test_ov_copying_score_from_eigenvalues(ns):
    def idiom(n):
        eigenvalues = n.model.OV.eigenvalues
        return eigenvalues.sum(dim=-1).real / eigenvalues.abs().sum(dim=-1)

    score = oracle(idiom)
    assert score.shape == (ns.model.cfg.n_layers, ns.model.cfg.n_heads)
    assert (score.abs() <= 1 + 1e-5).all()


def test_ov_head_and_full_circuit(ns):
    ov = ns.model.OV[1, 2]
    torch.testing.assert_close(ov.AB, ns.model.W_V[1, 2] @ ns.model.W_O[1, 2])
    full = oracle(lambda n: (n.model.W_E @ n.model.OV[1, 2] @ n.model.W_U).AB)
    torch.testing.assert_close(full, ns.model.W_E @ ov.AB @ ns.model.W_U, atol=1e-4, rtol=1e-4)


def test_factored_matrix_ops(ns):
    gen = torch.Generator().manual_seed(0)
    A, B, C = (torch.randn(s, generator=gen) for s in ((5, 2), (2, 5), (5, 3)))

    def idiom(n):
        AB = n.FactoredMatrix(A, B)
        ABC = AB @ C
        return AB.AB, AB.BA, AB.norm(), AB.eigenvalues, ABC.AB, AB.get_corner(2), AB.svd()[1]

    AB, BA, norm, eig, ABC, corner, S = oracle(idiom)
    torch.testing.assert_close(AB, A @ B)
    torch.testing.assert_close(BA, B @ A)
    torch.testing.assert_close(norm, (A @ B).norm())
    torch.testing.assert_close(ABC, A @ B @ C)
    torch.testing.assert_close(corner, (A @ B)[:2, :2])
    torch.testing.assert_close(torch.sort(eig.abs()).values, torch.sort(torch.linalg.eigvals(B @ A).abs()).values)


def test_factored_matrix_svd_returns_v(ns):
    U, S, V = ns.model.OV[0, 1].svd()
    torch.testing.assert_close(U @ torch.diag_embed(S) @ V.T, ns.model.OV[0, 1].AB, atol=1e-5, rtol=1e-4)


# -- plotting and utilities -----------------------------------------------------------------------------
def test_imshow_and_line_with_lens_plot(ns):
    data = torch.randn(ns.model.cfg.n_layers, ns.model.cfg.n_heads)
    fig = lens.plot.imshow(data, title="per head", x_title="Head", y_title="Layer")  # px-style labels= is not accepted
    assert fig.data[0].z.shape == tuple(data.shape)
    _, cache = ns.model.run_with_cache(PROMPT)
    acc, labels = cache.accumulated_resid(layer=-1, pos_slice=-1, return_labels=True)
    fig = lens.plot.line(acc.norm(dim=-1).mean(-1), x=labels, title="norm")
    assert list(fig.data[0].x) == labels


def test_attention_pattern_plot(ns):
    _, cache = ns.model.run_with_cache(PROMPT, remove_batch_dim=True)
    str_tokens = ns.model.to_str_tokens(PROMPT)
    fig = lens.plot.attention_patterns(cache["pattern", 0, "attn"], str_tokens)
    assert fig is not None


def test_test_prompt_prints_rank_of_answer(ns, capsys):
    ns.utils.test_prompt(
        "when John and Mary went to the store , John gave a drink to", " Mary", ns.model, prepend_bos=True
    )
    out = capsys.readouterr().out
    assert "Mary" in out and "rank" in out.lower()
    if HAS_TL:
        tl = tl_ns()
        tl.utils.test_prompt(PROMPT, " Mary", tl.model, prepend_bos=True)
        tl_out = capsys.readouterr().out
        rank = lambda text: [line for line in text.splitlines() if "Rank" in line][:1]
        assert rank(out) == rank(tl_out)


def test_to_numpy_and_slice(ns):
    arr = oracle(lambda n: n.utils.to_numpy(torch.arange(6).reshape(2, 3)))
    assert arr.shape == (2, 3)
    sl = oracle(lambda n: n.utils.Slice((1, 3)).apply(torch.arange(10)))
    torch.testing.assert_close(sl, torch.arange(1, 3))
    idx = oracle(lambda n: n.utils.Slice([0, 2]).apply(torch.arange(10)))
    torch.testing.assert_close(idx, torch.tensor([0, 2]))


def test_input_to_embed(ns):
    residual, *_ = ns.model.input_to_embed(PROMPT)
    _, cache = ns.model.run_with_cache(PROMPT)
    torch.testing.assert_close(residual, cache["resid_pre", 0])
    oracle(lambda n: n.model.input_to_embed(PROMPT)[0])


def test_solu_ln_model():
    cfg = lens.TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=20, n_ctx=8, act_fn="solu_ln", d_mlp=32)
    model = lens.HookedTransformer(cfg, seed=0)
    _, cache = model.run_with_cache(torch.arange(6)[None])
    mid = cache["blocks.0.mlp.hook_mid"]
    pre = cache["blocks.0.mlp.hook_pre"]
    torch.testing.assert_close(mid, pre * torch.softmax(pre, dim=-1))


# -- more cache, hook and utility idioms ------------------------------------------------------------------
def test_config_fields(ns):
    fields = oracle(
        lambda n: [
            n.model.cfg.n_layers,
            n.model.cfg.d_model,
            n.model.cfg.n_heads,
            n.model.cfg.d_head,
            n.model.cfg.d_mlp,
            n.model.cfg.d_vocab,
            n.model.cfg.n_ctx,
        ]
    )
    assert fields == [2, 32, 4, 8, 128, 96, 64]


def test_names_filter_function_in_run_with_cache(ns):
    keys = oracle(
        lambda n: sorted(n.model.run_with_cache(PROMPT, names_filter=lambda name: name.endswith("pattern"))[1].keys())
    )
    assert keys == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]


def test_cache_remove_batch_dim_and_apply_slice(ns):
    def idiom(n):
        _, cache = n.model.run_with_cache(PROMPT)
        return cache.remove_batch_dim()["resid_post", 0]

    resid = oracle(idiom)
    _, cache = ns.model.run_with_cache(PROMPT)
    torch.testing.assert_close(resid, cache["resid_post", 0][0])


def test_batched_prompts_padding_and_token_position(ns):
    prompts = ["the cat", "when John and Mary went"]
    tokens = oracle(lambda n: n.model.to_tokens(prompts))
    assert tokens.shape == (2, 5)
    assert (tokens[0, 2:] == ns.model.tokenizer.pad_token_id).all()  # right padding by default
    pos = oracle(lambda n: n.model.get_token_position(" Mary", PROMPT))
    assert ns.model.to_str_tokens(PROMPT)[pos] == "Mary"


def test_neuron_and_full_decomposition(ns):
    def idiom(n):
        _, cache = n.model.run_with_cache(PROMPT)
        neurons, neuron_labels = cache.stack_neuron_results(layer=1, pos_slice=-1, return_labels=True)
        full, labels = cache.get_full_resid_decomposition(expand_neurons=False, pos_slice=-1, return_labels=True)
        return neurons, neuron_labels, full, labels

    neurons, neuron_labels, full, _ = oracle(idiom)
    assert neuron_labels[:2] == ["L0N0", "L0N1"]
    _, cache = ns.model.run_with_cache(PROMPT)
    torch.testing.assert_close(full.sum(0), cache["resid_post", -1][:, -1], atol=1e-4, rtol=1e-4)
    assert neurons.shape[0] == ns.model.cfg.d_mlp  # layer=1: the neurons of layer 0
    torch.testing.assert_close(neurons.sum(0), cache["mlp_out", 0][:, -1] - ns.model.b_out[0], atol=1e-4, rtol=1e-4)


def test_permanent_hooks(ns):
    clean = ns.model(PROMPT)
    ns.model.add_perma_hook("blocks.0.hook_mlp_out", lambda act, hook: act * 0)
    try:
        ns.model.reset_hooks()  # permanent hooks survive a plain reset
        hooked = ns.model(PROMPT)
        assert not torch.allclose(hooked, clean)
    finally:
        ns.model.reset_hooks(including_permanent=True)
    torch.testing.assert_close(ns.model(PROMPT), clean)


def test_lm_cross_entropy_loss_matches_model_loss(ns):
    loss = oracle(lambda n: n.utils.lm_cross_entropy_loss(n.model(PROMPT), n.model.to_tokens(PROMPT)))
    torch.testing.assert_close(loss, ns.model(PROMPT, return_type="loss"))


def test_get_corner_and_all_head_labels(ns):
    corner = oracle(lambda n: n.utils.get_corner(n.model.W_Q[0, 0], 3))
    torch.testing.assert_close(corner, ns.model.W_Q[0, 0, :3, :3])
    labels = oracle(lambda n: n.model.all_head_labels())
    assert labels[:2] == ["L0H0", "L0H1"] and len(labels) == 8


def test_attn_head_all_pos_every_patching(ns):
    def idiom(n):
        _, clean_cache = n.model.run_with_cache(PROMPT)
        return n.patching.get_act_patch_attn_head_all_pos_every(
            n.model, n.model.to_tokens(CORRUPT), clean_cache, _ioi_metric
        )

    result = oracle(idiom)
    assert result.shape == (5, ns.model.cfg.n_layers, ns.model.cfg.n_heads)  # output, query, key, value, pattern


def test_generate_from_tokens_returns_tokens(ns):
    prompt = ns.model.to_tokens("the cat")
    out = oracle(
        lambda n: n.model.generate(prompt, max_new_tokens=4, do_sample=False, stop_at_eos=False, verbose=False)
    )
    assert out.shape == (1, prompt.shape[1] + 4) and torch.equal(out[:, : prompt.shape[1]], prompt)
    logits = ns.model(out[:, :-1])
    assert torch.equal(out[0, prompt.shape[1] :], logits[0, prompt.shape[1] - 1 :].argmax(-1))  # greedy = argmax


def test_per_layer_attention_factored_circuits(ns):
    qk = oracle(lambda n: n.model.blocks[1].attn.QK.AB)
    torch.testing.assert_close(qk, ns.model.W_Q[1] @ ns.model.W_K[1].transpose(-1, -2))
    ov = oracle(lambda n: n.model.blocks[0].attn.OV.AB)
    torch.testing.assert_close(ov, ns.model.W_V[0] @ ns.model.W_O[0])


def test_compute_head_results_and_stack_activation(ns):
    def idiom(n):
        _, cache = n.model.run_with_cache(PROMPT)
        cache.compute_head_results()
        return cache["blocks.0.attn.hook_result"], cache.stack_activation("pattern")

    result, patterns = oracle(idiom)
    _, cache = ns.model.run_with_cache(PROMPT)
    torch.testing.assert_close(result.sum(-2) + ns.model.b_O[0], cache["attn_out", 0], atol=1e-5, rtol=1e-5)
    assert patterns.shape[0] == ns.model.cfg.n_layers
