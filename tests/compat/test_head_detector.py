"""TransformerLens's ``head_detector`` API (``lens.head_detector``): patterns and scores.

Oracles: the definitions written out on the cached patterns (always run) and TransformerLens's own
``detect_head`` on identical weights and prompts (optional; skipped without ``transformer_lens``).
"""

from __future__ import annotations

import importlib.util
import itertools

import pytest
import torch

from lens import head_detector as hd
from lens.tools import head_detector
from tests.compat._tl import lens_model

PROMPT = "the cat sat on the mat the cat sat on the mat"


@pytest.fixture(scope="module")
def model():
    return lens_model("gpt2")


def test_alias_is_the_tools_module():
    assert hd is head_detector and hd.HEAD_NAMES == ("previous_token_head", "duplicate_token_head", "induction_head")


def test_detection_patterns_are_their_definitions():
    tokens = torch.tensor([[5, 7, 5, 9, 7, 5]])
    n = tokens.shape[1]
    prev = hd.get_previous_token_head_detection_pattern(tokens)
    dup = hd.get_duplicate_token_head_detection_pattern(tokens)
    ind = hd.get_induction_head_detection_pattern(tokens)
    row = tokens[0]
    for q, k in itertools.product(range(n), range(n)):
        assert prev[q, k] == float(k == q - 1)
        assert dup[q, k] == float(k < q and row[k] == row[q])
        assert ind[q, k] == float(0 < k <= q and k - 1 < q and row[k - 1] == row[q])


@pytest.mark.parametrize("name", ["previous_token_head", "duplicate_token_head", "induction_head"])
@pytest.mark.parametrize("exclude_bos", [False, True])
@pytest.mark.parametrize("exclude_current_token", [False, True])
def test_mul_and_abs_scores_are_the_written_out_definitions(model, name, exclude_bos, exclude_current_token):
    tokens = model.to_tokens(PROMPT)
    det = {"previous_token_head": hd.get_previous_token_head_detection_pattern,
           "duplicate_token_head": hd.get_duplicate_token_head_detection_pattern,
           "induction_head": hd.get_induction_head_detection_pattern}[name](tokens)  # fmt: skip
    _, cache = model.run_with_cache(tokens)
    kw = dict(exclude_bos=exclude_bos, exclude_current_token=exclude_current_token)
    mul = hd.detect_head(model, PROMPT, name, **kw)
    absolute = hd.detect_head(model, PROMPT, name, error_measure="abs", **kw)
    keep = torch.ones_like(det)
    if exclude_bos:
        keep[:, 0] = 0
    if exclude_current_token:
        keep.fill_diagonal_(0)
    for layer, head in itertools.product(range(model.cfg.n_layers), range(model.cfg.n_heads)):
        a = cache["pattern", layer][0, head]
        want_mul = (a * keep * det).sum() / (a * keep).sum()
        want_abs = 1 - round(((a - det).abs() * keep).sum().item() / len(det), 3)
        torch.testing.assert_close(mul[layer, head], want_mul, atol=1e-6, rtol=1e-6)
        assert absolute[layer, head].item() == pytest.approx(want_abs, abs=1e-6)
    torch.testing.assert_close(cache["pattern", 0][0].sum(-1), torch.ones(model.cfg.n_heads, len(det)))  # untouched


def test_heads_selects_and_the_rest_are_minus_one(model):
    full = hd.detect_head(model, PROMPT, "previous_token_head")
    some = hd.detect_head(model, PROMPT, "previous_token_head", heads=[(0, 1), (1, 3)])
    same = hd.detect_head(model, PROMPT, "previous_token_head", heads={0: [1], 1: [3]})
    torch.testing.assert_close(some, same)
    mask = torch.zeros_like(full, dtype=torch.bool)
    mask[0, 1] = mask[1, 3] = True
    torch.testing.assert_close(some[mask], full[mask])
    assert (some[~mask] == -1).all()


def test_list_of_prompts_is_the_mean_and_a_cache_is_reused(model):
    prompts = [PROMPT, "a dog ran a dog ran"]
    mean = hd.detect_head(model, prompts, "induction_head")
    each = [hd.detect_head(model, p, "induction_head") for p in prompts]
    torch.testing.assert_close(mean, torch.stack(each).mean(0))
    tokens = model.to_tokens(PROMPT)
    det = hd.get_previous_token_head_detection_pattern(tokens)
    _, cache = model.run_with_cache(tokens, remove_batch_dim=True)
    torch.testing.assert_close(hd.detect_head(model, PROMPT, det, cache=cache), hd.detect_head(model, PROMPT, det))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (dict(detection_pattern="nope_head"), "is not one of"),
        (dict(detection_pattern="induction_head", error_measure="max"), "error_measure='max'"),
        (dict(detection_pattern=torch.ones(3, 3).tril()), "lower-triangular \\[pos, pos\\]"),
        (dict(detection_pattern=torch.ones(13, 13)), "lower-triangular"),
        (dict(detection_pattern="induction_head", heads=[(5, 0)]), "outside the model"),
    ],
)
def test_bad_input_raises_value_error(model, kwargs, words):
    with pytest.raises(ValueError, match=words):
        hd.detect_head(model, PROMPT, **kwargs)


def test_one_token_prompt_and_non_binary_mul_pattern(model):
    with pytest.raises(ValueError, match="needs more than 1"):
        hd.detect_head(model, "cat", "previous_token_head")
    n = model.to_tokens(PROMPT).shape[1]
    with pytest.warns(UserWarning, match="other than 0 or 1"):
        hd.detect_head(model, PROMPT, 0.5 * torch.ones(n, n).tril())


@pytest.mark.skipif(
    importlib.util.find_spec("transformer_lens") is None,
    reason="optional oracle: transformer_lens is not installed (see docs/migrating-from-transformer-lens.md)",
)
@pytest.mark.parametrize("measure", ["mul", "abs"])
@pytest.mark.parametrize("flags", [(False, False), (True, False), (False, True), (True, True)])
def test_detect_head_matches_transformer_lens(measure, flags):
    from transformer_lens import head_detector as tl_hd

    from tests.compat._tl import tl_and_lens_gpt2

    tl_model, model = tl_and_lens_gpt2()
    kw = dict(exclude_bos=flags[0], exclude_current_token=flags[1], error_measure=measure)
    for name in hd.HEAD_NAMES:
        expected = tl_hd.detect_head(tl_model, PROMPT, name, **kw)
        torch.testing.assert_close(hd.detect_head(model, PROMPT, name, **kw), expected, atol=1e-5, rtol=1e-5)
    n = model.to_tokens(PROMPT).shape[1]
    custom = torch.zeros(n, n)
    custom[:, 0] = 1
    heads = [(0, 1), (1, 2)]
    expected = tl_hd.detect_head(tl_model, PROMPT, custom, heads=heads, **kw)
    torch.testing.assert_close(hd.detect_head(model, PROMPT, custom, heads=heads, **kw), expected, atol=1e-5, rtol=1e-5)
    # A list of prompts: TransformerLens 2.18 scores each prompt with the default settings whatever was
    # passed (its recursion drops heads, exclude_* and error_measure); lens passes them on. Equal at defaults.
    prompts = [PROMPT, "cat sat cat sat"]
    expected = tl_hd.detect_head(tl_model, prompts, "induction_head")
    torch.testing.assert_close(hd.detect_head(model, prompts, "induction_head"), expected, atol=1e-5, rtol=1e-5)
    each = torch.stack([tl_hd.detect_head(tl_model, p, "induction_head", **kw) for p in prompts]).mean(0)
    torch.testing.assert_close(hd.detect_head(model, prompts, "induction_head", **kw), each, atol=1e-5, rtol=1e-5)
