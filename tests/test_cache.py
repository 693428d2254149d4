"""ActivationCache keys, TransformerLens shorthand and transforms; get_act_name."""

from __future__ import annotations

import pytest
import torch

from lens.utils import get_act_name
from tests.conftest import tiny_model


@pytest.mark.parametrize(
    "args, name",
    [
        (("pattern", 3), "blocks.3.attn.hook_pattern"),
        (("attn", 0), "blocks.0.attn.hook_pattern"),
        (("attn_scores", 1), "blocks.1.attn.hook_attn_scores"),
        (("resid_pre", 5), "blocks.5.hook_resid_pre"),
        (("scale", 2, "ln1"), "blocks.2.ln1.hook_scale"),
        (("normalized", 2, "ln2"), "blocks.2.ln2.hook_normalized"),
        (("scale",), "ln_final.hook_scale"),
        (("embed",), "hook_embed"),
        (("pos_embed",), "hook_pos_embed"),
        (("q", 1), "blocks.1.attn.hook_q"),
        (("rot_k", 1), "blocks.1.attn.hook_rot_k"),
        (("post", 4), "blocks.4.mlp.hook_post"),
        (("mlp_pre", 4), "blocks.4.mlp.hook_pre"),
        (("pre_linear", 4), "blocks.4.mlp.hook_pre_linear"),
        (("mlp_out", 0), "blocks.0.hook_mlp_out"),
        (("blocks.0.hook_resid_post",), "blocks.0.hook_resid_post"),
    ],
)
def test_get_act_name(args, name):
    assert get_act_name(*args) == name


def test_cache_shorthand_and_transforms():
    model = tiny_model("gpt2")
    toks = torch.randint(0, 97, (1, 5))
    _, cache = model.run_with_cache(toks)
    assert cache["pattern", 0] is cache["blocks.0.attn.hook_pattern"]
    assert cache["resid_pre", -1] is cache["blocks.1.hook_resid_pre"]
    assert cache["scale", 1, "ln1"] is cache["blocks.1.ln1.hook_scale"]
    assert cache["embed"] is cache["hook_embed"]
    assert ("pattern", 0) in cache and "blocks.9.hook_z" not in cache
    assert len(cache) == len(model.hook_dict) and set(cache) == set(model.hook_dict)
    assert all(not v.requires_grad for v in cache.values())
    batch_free = cache.apply_slice_to_batch_dim(0)
    assert batch_free["z", 0].shape == (5, 4, 8)
    cache.remove_batch_dim()
    assert cache["resid_post", 0].shape == (5, 32)
    assert cache.to("cpu")["embed"].device.type == "cpu"


def test_run_with_cache_remove_batch_dim_and_device():
    model = tiny_model("llama")
    _, cache = model.run_with_cache(torch.randint(0, 97, (1, 4)), remove_batch_dim=True, device="cpu")
    assert cache["pattern", 1].shape == (4, 4, 4)
    assert cache["k", 0].shape == (4, 2, 8)


def test_names_filter_forms():
    model = tiny_model("gpt2")
    toks = torch.randint(0, 97, (1, 4))
    assert list(model.run_with_cache(toks, names_filter="hook_embed")[1].keys()) == ["hook_embed"]
    two = model.run_with_cache(toks, names_filter=["hook_embed", "blocks.1.attn.hook_z"])[1]
    assert set(two.keys()) == {"hook_embed", "blocks.1.attn.hook_z"}
    fn = model.run_with_cache(toks, names_filter=lambda n: n.endswith("resid_post"))[1]
    assert set(fn.keys()) == {"blocks.0.hook_resid_post", "blocks.1.hook_resid_post"}


def test_keep_freed_memory_opt_in():
    import platform

    import pytest

    from lens.utils import keep_freed_memory

    with pytest.raises(ValueError, match="max_bytes"):
        keep_freed_memory(0)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert keep_freed_memory() is True
