"""run_with_cache's recycled memory: same values as plain caching, reuse only of memory nobody holds."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import lens
import lens.activation_pool
from tests.conftest import tiny_model


def _tokens(seed: int, batch: int = 2, pos: int = 12):
    return torch.randint(0, 50, (batch, pos), generator=torch.Generator().manual_seed(seed))


def _ptrs(cache) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in cache.values()}


def test_pooled_cache_equals_reference_cache():
    model = tiny_model("gpt2")
    toks = _tokens(0)
    out_a, pooled = model.run_with_cache(toks)
    out_b, plain = model.run_with_cache(toks, reuse_memory=False)
    torch.testing.assert_close(out_a, out_b, atol=0, rtol=0)
    assert pooled.keys() == plain.keys()
    for k in plain.keys():
        torch.testing.assert_close(pooled[k], plain[k], atol=0, rtol=0)


def test_memory_is_reused_only_after_the_cache_is_gone():
    model = tiny_model("gpt2")
    _, first = model.run_with_cache(_tokens(0))
    first_ptrs = _ptrs(first)
    _, second = model.run_with_cache(_tokens(1))  # `first` is alive: nothing of it may be reused
    assert not first_ptrs & _ptrs(second)
    del first
    _, third = model.run_with_cache(_tokens(2))
    assert _ptrs(third) <= first_ptrs  # all of it comes from the dropped cache


def test_kept_views_and_arrays_are_never_overwritten():
    model = tiny_model("llama")
    _, cache = model.run_with_cache(_tokens(0))
    view = cache["blocks.0.hook_resid_post"][:, 1:]  # a view keeps the storage in use
    array = cache["blocks.1.attn.hook_pattern"].numpy()  # so does a NumPy array
    view_before, array_before = view.clone(), array.copy()
    del cache
    for seed in (1, 2, 3):
        _, other = model.run_with_cache(_tokens(seed))
        del other
    torch.testing.assert_close(view, view_before, atol=0, rtol=0)
    assert (array == array_before).all()


def test_one_activation_seen_by_two_hooks_is_copied_once():
    model = tiny_model("gpt2")
    _, cache = model.run_with_cache(_tokens(0))
    assert cache["blocks.0.hook_resid_post"] is cache["blocks.1.hook_resid_pre"]


def test_pool_is_bounded_and_releasable():
    model = tiny_model("gpt2")
    sizes = []
    for seed in range(6):
        _, c = model.run_with_cache(_tokens(seed, pos=10 + seed))  # new shapes each call: no reuse
        sizes.append(sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in c.values()}.values()))
        del c
    pool = model._activation_pool
    assert pool.nbytes == sum(sizes[-3:])  # only the last three calls' buffers are kept
    model.clear_activation_pool()
    assert pool.nbytes == 0


def test_a_copied_model_starts_with_an_empty_pool():
    model = tiny_model("gpt2")
    _, cache = model.run_with_cache(_tokens(0))
    assert model._activation_pool.nbytes > 0
    clone = copy.deepcopy(model)
    assert clone._activation_pool.nbytes == 0
    restored = pickle.loads(pickle.dumps(model._activation_pool))
    assert restored.nbytes == 0
    _, again = clone.run_with_cache(_tokens(0))
    torch.testing.assert_close(again["blocks.1.hook_mlp_out"], cache["blocks.1.hook_mlp_out"], atol=0, rtol=0)


def test_a_rebinding_loop_alternates_between_two_caches_of_memory():
    model = tiny_model("gpt2")
    seen = []
    cache = None
    for seed in range(5):
        _, cache = model.run_with_cache(_tokens(seed))  # the previous cache is alive during this call
        seen.append(_ptrs(cache))
    one_cache = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in cache.values()}.values())
    assert seen[2] == seen[0] and seen[3] == seen[1] and not seen[0] & seen[1]
    assert model._activation_pool.nbytes == 2 * one_cache


def _snapshot_checks(model, toks):
    """Cached values are copies taken when the hook fired: a later in-place edit does not show in the cache."""

    def edit(x, hook):
        x.mul_(0.0)

    _, ref = model.run_with_cache(toks, reuse_memory=False)
    _, pooled = model.run_with_cache(toks)
    for name in ref.keys():
        torch.testing.assert_close(pooled[name], ref[name], atol=0, rtol=0)
    cache_dict, fwd, _ = model.get_caching_hooks(["hook_embed"], pool=lens.activation_pool.ActivationPool())
    with model.hooks(fwd_hooks=fwd + [("hook_embed", edit)]):
        model(toks)
    assert cache_dict["hook_embed"].abs().sum() > 0  # the edit after the caching hook did not reach the copy


@pytest.mark.parametrize("has_api", [True, False], ids=["use-count-api", "no-private-api"])
def test_pool_copies_with_and_without_the_private_api(monkeypatch, has_api):
    import lens.activation_pool as ap

    if not has_api:
        monkeypatch.setattr(ap, "_use_count", None)
        assert not ap.ActivationPool().recycles
    model = lens.HookedTransformer(lens.TransformerConfig(n_layers=2, d_model=16, n_heads=2, d_vocab=50, n_ctx=16))
    toks = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    _snapshot_checks(model, toks)


def test_pool_is_thread_safe():
    import threading

    pool = lens.activation_pool.ActivationPool()
    errors = []

    def work():
        try:
            for _ in range(200):
                pool.new_call()
                t = pool.take(torch.ones(4, 3))
                assert torch.equal(t, torch.ones(4, 3))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
