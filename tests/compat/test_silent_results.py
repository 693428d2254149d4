"""Misuse that used to return wrong numbers without an error (issue #12).

Each test failed on the code before its fix: an ``attention_mask`` of 2 changed the logits, the loss of a
1-token input was nan, an integer checkpoint tensor loaded into a float weight. The activation pool's
documented contract (keep a tensor, not a bare ``untyped_storage()``) is pinned at the end.
"""

from __future__ import annotations

import copy
import gc

import pytest
import torch
from safetensors.torch import load_file, save_file

import lens
from lens.loading import from_hf_model
from lens.utils import lm_cross_entropy_loss
from tests.tiny import VOCAB, copy_dir, saved, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")  # rotary: positions come from the mask, so a bad mask value shows in the logits


@pytest.fixture
def tokens():
    return torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))


# -- attention_mask: bool or 0/1 only ---------------------------------------------------------------------
def test_attention_mask_accepts_bool_and_zero_one_of_any_dtype(model, tokens):
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    want = model(tokens, attention_mask=mask)
    for form in (mask.bool(), mask.float(), mask.to(torch.int32), mask.to(torch.uint8), mask.double()):
        assert torch.equal(model(tokens, attention_mask=form), want), form.dtype
    # the padded row's real tokens agree with that row run alone (the mask is honoured, not ignored)
    alone = model(tokens[:1, 2:])
    torch.testing.assert_close(want[:1, 2:], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad", [2, -1, 0.5, float("nan")])
def test_attention_mask_other_values_raise_naming_the_value(model, tokens, bad):
    mask = torch.ones(2, 6, dtype=torch.float32 if isinstance(bad, float) else torch.long)
    mask[1, 3] = bad
    with pytest.raises(ValueError, match="attention_mask holds the value") as info:
        model(tokens, attention_mask=mask)
    assert repr(mask[1, 3].item()) in str(info.value)
    with pytest.raises(ValueError, match="attention_mask holds the value"):
        model.generate(tokens, 2, attention_mask=mask, stop_at_eos=False)
    with pytest.raises(ValueError, match="attention_mask holds the value"):
        model.run_with_cache(tokens, attention_mask=mask)
    assert not any(hp.has_hooks for hp in model.hook_dict.values())


# -- loss needs at least 2 positions ------------------------------------------------------------------------
def test_loss_of_one_position_raises(model):
    one = torch.tensor([[5]])
    for return_type in ("loss", "both"):
        with pytest.raises(ValueError, match="at least 2 positions"):
            model(one, return_type=return_type)
    logits = model(one)
    with pytest.raises(ValueError, match="at least 2 positions"):
        model.loss_fn(logits, one)
    with pytest.raises(ValueError, match="at least 2 positions"):
        lm_cross_entropy_loss(logits, one, per_token=True)
    resid = model(one, stop_at_layer=1)
    with pytest.raises(ValueError, match="at least 2 positions"):
        model(resid, start_at_layer=1, tokens=one, return_type="loss")


def test_loss_of_two_positions_is_the_one_prediction(model):
    two = torch.tensor([[5, 7]])
    logits, loss = model(two, return_type="both")
    want = -torch.log_softmax(logits[0, 0].float(), -1)[7]
    torch.testing.assert_close(loss, want)
    assert torch.isfinite(loss)


# -- integer checkpoint tensor for a float weight ------------------------------------------------------------
def test_integer_tensor_in_a_safetensors_checkpoint_is_named(tmp_path):
    directory = copy_dir(saved("gpt2")[0], tmp_path / "gpt2")
    path = directory / "model.safetensors"
    tensors = load_file(path)
    name = next(n for n in tensors if n.endswith("h.0.mlp.c_fc.weight"))
    tensors[name] = (tensors[name] * 100).to(torch.int32)
    save_file(tensors, path)
    with pytest.raises(ValueError, match="torch.int32") as info:
        lens.HookedTransformer.from_pretrained(directory)
    assert repr(name) in str(info.value)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int64, torch.bool])
def test_integer_weight_of_a_model_object_is_named(dtype):
    hf = copy.deepcopy(saved("gpt2")[1])
    attn = hf.transformer.h[1].attn.c_attn
    attn.weight = torch.nn.Parameter(attn.weight.detach().round().to(dtype), requires_grad=False)
    for load in (
        lambda: from_hf_model(hf, model_class=lens.HookedTransformer, dtype=torch.float32),
        lambda: lens.HookedTransformer.from_pretrained(hf, dtype=torch.float32),
    ):
        with pytest.raises(ValueError, match=str(dtype)) as info:
            load()
        assert "h.1.attn.c_attn.weight" in str(info.value)


def test_integer_tensor_in_load_state_dict_is_named():
    model = tiny_model("gpt2")
    sd = model.state_dict()
    before = {k: v.clone() for k, v in sd.items()}
    name = "blocks.0.attn.qkv_weight"
    bad = {**sd, name: (sd[name] * 100).to(torch.int16)}
    with pytest.raises(ValueError, match="torch.int16") as info:
        model.load_state_dict(bad)
    assert repr(name) in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing copied
    model.load_state_dict({k: v * 2 for k, v in before.items()})  # float tensors still load
    assert torch.equal(model.state_dict()[name], before[name] * 2)


# -- the activation pool's contract ------------------------------------------------------------------------------
def test_pool_contract_a_kept_tensor_is_safe_a_bare_storage_is_not():
    """run_with_cache's docstring: a buffer is recycled only when no tensor, view or NumPy array of it is
    alive; a bare ``untyped_storage()`` does not keep it."""
    model = tiny_model("gpt2")
    if not model.__dict__.setdefault("_activation_pool", lens.activation_pool.ActivationPool()).recycles:
        pytest.skip("this torch lacks the storage use count; the pool copies without recycling")
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randint(0, VOCAB, (2, 9), generator=g) for _ in range(2))
    name = "blocks.1.hook_resid_post"

    _, cache = model.run_with_cache(a)
    kept = torch.empty(0).set_(cache[name].untyped_storage())  # a tensor over the storage keeps it
    before = kept.clone()
    del cache
    gc.collect()
    for _ in range(3):
        _, other = model.run_with_cache(b)
    assert torch.equal(kept, before)
    del kept, other
    gc.collect()

    _, cache = model.run_with_cache(a)
    storage = cache[name].untyped_storage()  # only the storage: the pool may hand the memory out again
    ptr = storage.data_ptr()
    del cache
    gc.collect()
    caches = [model.run_with_cache(b)[1] for _ in range(2)]
    reused = {t.untyped_storage().data_ptr() for c in caches for t in c.values()}
    assert ptr in reused
