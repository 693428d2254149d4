"""run_with_hooks, hooks(), add_hook/reset_hooks, backward hooks, start/stop layers."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_model


@pytest.fixture
def model():
    return tiny_model("gpt2")


@pytest.fixture
def toks():
    return torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(0))


def _no_hooks_left(model):
    return not any(hp.has_hooks for hp in model.hook_dict.values())


def test_ablating_every_component_leaves_the_direct_path(model, toks):
    """Zeroing all attention and MLP outputs leaves logits = unembed(ln_final(embed + pos))."""
    zero = lambda x, hook: torch.zeros_like(x)  # noqa: E731
    is_out = lambda n: n.endswith(("hook_attn_out", "hook_mlp_out"))  # noqa: E731
    with torch.no_grad():
        logits = model.run_with_hooks(toks, fwd_hooks=[(is_out, zero)])
        direct = model.embed(toks) + model.pos_embed(torch.arange(8).expand(2, 8))
        expected = model.unembed(model.ln_final(direct))
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    assert _no_hooks_left(model)


def test_hook_can_edit_in_place_and_read(model, toks):
    seen = {}

    def read(x, hook):
        seen[hook.name] = x.clone()

    def double(x, hook):
        x *= 2  # in place, no return

    with torch.no_grad():
        model.run_with_hooks(toks, fwd_hooks=[("blocks.0.hook_attn_out", double), ("blocks.0.hook_resid_mid", read)])
        _, cache = model.run_with_cache(toks)
    resid_mid = cache["resid_pre", 0] + 2 * cache["attn_out", 0]
    torch.testing.assert_close(seen["blocks.0.hook_resid_mid"], resid_mid, atol=1e-6, rtol=0)


def test_hooks_context_manager_removes_on_error(model, toks):
    def boom(x, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", boom)]):
            model(toks)
    assert _no_hooks_left(model)
    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks(toks, fwd_hooks=[("hook_embed", boom)])
    assert _no_hooks_left(model)
    model.add_hook("blocks.0.hook_resid_post", boom, is_permanent=True)
    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_cache(toks)
    caching_left = [n for n, hp in model.hook_dict.items() if hp.has_hooks]
    assert caching_left == ["blocks.0.hook_resid_post"], "only the permanent hook may remain"
    model.reset_hooks(including_permanent=True)
    assert _no_hooks_left(model)


def test_run_with_cache_removes_hooks_when_forward_raises(model):
    with pytest.raises(ValueError):
        model.run_with_cache(torch.tensor([[1, 2, 500]]))
    assert _no_hooks_left(model)


def test_add_hook_and_permanent_hooks(model, toks):
    calls = []
    model.add_hook("blocks.0.hook_resid_pre", lambda x, hook: calls.append("temp"))
    model.add_hook("blocks.0.hook_resid_pre", lambda x, hook: calls.append("perm"), is_permanent=True)
    model(toks)
    assert calls == ["temp", "perm"]
    model.reset_hooks()
    model(toks)
    assert calls == ["temp", "perm", "perm"]
    model.reset_hooks(including_permanent=True)
    model(toks)
    assert len(calls) == 3 and _no_hooks_left(model)


def test_filter_function_targets_many_points(model, toks):
    names = []
    model.run_with_hooks(toks, fwd_hooks=[(lambda n: n.endswith("hook_z"), lambda x, hook: names.append(hook.name))])
    assert names == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]


def test_backward_hooks_and_incl_bwd_give_true_gradients(model, toks):
    captured = {}

    def keep(x, hook):
        x.retain_grad()
        captured["embed"] = x

    with model.hooks(fwd_hooks=[("hook_embed", keep)]):
        loss = model(toks, return_type="loss")
        loss.backward()
    expected = captured["embed"].grad
    model.zero_grad()
    _, cache = model.run_with_cache(toks, return_type="loss", incl_bwd=True, names_filter=["hook_embed"])
    torch.testing.assert_close(cache["hook_embed_grad"], expected)

    grads = []
    with model.hooks(bwd_hooks=[("blocks.1.hook_resid_post", lambda g, hook: grads.append(g.shape))]):
        model(toks, return_type="loss").backward()
    assert grads == [torch.Size([2, 8, 32])]
    assert _no_hooks_left(model)


def test_start_and_stop_at_layer_compose(model, toks):
    with torch.no_grad():
        full = model(toks)
        resid = model(toks, stop_at_layer=1)
        _, cache = model.run_with_cache(toks)
        torch.testing.assert_close(resid, cache["resid_pre", 1])
        rest = model(resid, start_at_layer=1)
        loss = model(resid, start_at_layer=1, tokens=toks, return_type="loss")
    torch.testing.assert_close(rest, full, atol=1e-6, rtol=0)
    torch.testing.assert_close(loss, model(toks, return_type="loss"), atol=1e-6, rtol=0)
    assert model(toks, stop_at_layer=-1).shape == (2, 8, 32)


def test_string_input_uses_tokenizer():
    import lens

    model = tiny_model("gpt2", d_vocab=259)
    model.set_tokenizer(lens.Tokenizer.byte_level())
    with torch.no_grad():
        from_str = model("hi there")
        from_tokens = model(model.to_tokens("hi there"))
        batch = model(["a", "hello"], padding_side="left")
    torch.testing.assert_close(from_str, from_tokens)
    torch.testing.assert_close(batch[0, -1], model("a")[0, -1], atol=1e-4, rtol=0)


def test_hook_epoch_changes_on_every_add_and_remove(model):
    """Loops that cache "is anything hooked?" (generation) rely on this counter to re-check."""
    from lens.hooks import hook_epoch

    point = model.hook_dict["blocks.0.hook_resid_pre"]
    e0 = hook_epoch()
    handle = point.add_hook(lambda x, hook: None)
    e1 = hook_epoch()
    assert e1 != e0 and point.has_hooks
    handle.remove()
    e2 = hook_epoch()
    assert e2 != e1 and not point.has_hooks
    handle.remove()  # removing twice changes nothing
    assert hook_epoch() == e2
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, hook: None)]):
        assert hook_epoch() != e2
    e3 = hook_epoch()
    model.add_hook("blocks.0.hook_resid_post", lambda x, hook: None)
    assert hook_epoch() != e3
    e4 = hook_epoch()
    model.reset_hooks()
    assert hook_epoch() != e4 and not any(p.has_hooks for p in model.hook_dict.values())
