"""One model used from several threads at once (issue #12).

Hooks that ``run_with_cache`` / ``run_with_hooks`` / ``with model.hooks(...)`` add belong to the calling
thread: they fire only in the thread that added them, so concurrent calls neither record nor edit each
other's activations, and a component's fast path (fused attention when nothing watches the pattern) is
chosen per thread. Hooks added with ``model.add_hook`` / ``HookPoint.add_hook`` fire in every thread.
The oracle is the same calls run one after another.
"""

from __future__ import annotations

import threading

import pytest
import torch

from tests.tiny import VOCAB, tiny_model

N_THREADS, REPEATS = 4, 6


def _inputs(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return [torch.randint(0, VOCAB, (2, 7 + i), generator=g) for i in range(n)]


def _edit(i: int):
    """An editing hook that depends on the thread's task, so a hook firing in the wrong thread shows."""

    def hook(x, hook):
        return x * (1.0 + 0.25 * (i + 1))

    return hook


def _task(model, i: int, tokens: torch.Tensor):
    if i % 2 == 0:
        logits, cache = model.run_with_cache(tokens)
        return logits, {k: v.clone() for k, v in cache.items()}
    logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_mid", _edit(i))])
    with model.hooks(fwd_hooks=[("blocks.1.mlp.hook_post", _edit(i))]):
        logits2, cache = model.run_with_cache(tokens, names_filter=lambda n: "pattern" in n or "resid" in n)
    return (logits, logits2), {k: v.clone() for k, v in cache.items()}


def _run_threads(model, inputs):
    results: dict[tuple[int, int], object] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(N_THREADS)

    def work(i: int) -> None:
        try:
            barrier.wait()
            for r in range(REPEATS):
                results[i, r] = _task(model, i, inputs[i])
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _assert_same(got, want, where: str) -> None:
    if isinstance(want, tuple):
        for g, w in zip(got, want, strict=True):
            _assert_same(g, w, where)
        return
    if isinstance(want, dict):
        assert set(got) == set(want), where
        wrong = [k for k in want if not torch.equal(got[k], want[k])]
        assert not wrong, f"{where}: {len(wrong)} of {len(want)} cache entries differ from the serial run: {wrong[:5]}"
        return
    assert torch.equal(got, want), where


@pytest.fixture
def one_intra_op_thread():
    """Equal numbers need the same kernels in the serial and the threaded run; the race is the point."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_concurrent_caches_and_edits_equal_serial(family, one_intra_op_thread):
    model = tiny_model(family)
    inputs = _inputs(N_THREADS)
    serial = {i: _task(model, i, inputs[i]) for i in range(N_THREADS)}
    results = _run_threads(model, inputs)
    for (i, r), got in results.items():
        _assert_same(got, serial[i], f"thread {i}, repeat {r}")
    assert all(not hp._fwd and not hp._bwd for hp in model.hook_dict.values()), "call hooks were left attached"


def test_global_hooks_fire_in_every_thread_and_call_hooks_only_in_their_own():
    model = tiny_model("gpt2")
    seen: list[str] = []
    model.add_hook("hook_embed", lambda x, hook: seen.append(threading.current_thread().name))
    other_ran = threading.Event()
    release = threading.Event()
    calls_in_other: list[int] = []

    def other():
        other_ran.set()
        release.wait(10)
        model(torch.tensor([[1, 2, 3]]))

    t = threading.Thread(target=other, name="other")
    with model.hooks(fwd_hooks=[("hook_embed", lambda x, hook: calls_in_other.append(threading.get_ident()))]):
        t.start()
        other_ran.wait(10)
        release.set()
        t.join()
        assert calls_in_other == []  # the other thread ran while this call's hook was attached: not fired
        model(torch.tensor([[1, 2, 3]]))
    assert calls_in_other == [threading.get_ident()]
    assert sorted(seen) == sorted(["other", threading.current_thread().name])
    model.reset_hooks()


def test_has_hooks_is_per_thread():
    model = tiny_model("gpt2")
    point = model.hook_dict["blocks.0.attn.hook_pattern"]
    answers: dict[str, bool] = {}
    with model.hooks(fwd_hooks=[(point.name, lambda x, hook: None)]):
        answers["here"] = point.has_hooks
        t = threading.Thread(target=lambda: answers.__setitem__("there", point.has_hooks))
        t.start()
        t.join()
    assert answers == {"here": True, "there": False}


def test_reset_hooks_in_another_thread_leaves_a_running_call_alone():
    model = tiny_model("gpt2")
    with model.hooks(fwd_hooks=[("hook_embed", lambda x, hook: x * 0)]):
        t = threading.Thread(target=model.reset_hooks)
        t.start()
        t.join()
        assert model.hook_dict["hook_embed"].has_hooks
    assert not model.hook_dict["hook_embed"].has_hooks


def _gen_task(model, i: int, prompt: torch.Tensor):
    if i == 0:  # one row, many steps: the tied unembedding's decode copy is in play (model.decoding)
        return model.generate(prompt[:1], 40, stop_at_eos=False)
    if i == 1:
        out = model.generate(prompt, 6, stop_at_eos=False, return_cache=True, names_filter=lambda n: "resid" in n)
        return out.output, dict(out.cache.items())
    if i == 2:  # one-row forwards while another thread decodes
        return torch.stack([model(prompt[:1, : 3 + k % 4], logits_to_keep=1)[:, -1] for k in range(60)])
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", _edit(i))]):
        return model.generate(prompt, 6, stop_at_eos=False, num_beams=2)


def test_concurrent_generation_equals_serial(one_intra_op_thread):
    model = tiny_model("gpt2", tie_word_embeddings=True)
    g = torch.Generator().manual_seed(9)
    prompts = [torch.randint(3, VOCAB, (2, 5 + i), generator=g) for i in range(N_THREADS)]
    serial = {i: _gen_task(model, i, prompts[i]) for i in range(N_THREADS)}
    results: dict[tuple[int, int], object] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(N_THREADS)

    def work(i: int) -> None:
        try:
            barrier.wait()
            for r in range(3):
                results[i, r] = _gen_task(model, i, prompts[i])
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    for (i, r), got in results.items():
        _assert_same(got, serial[i], f"generation thread {i}, repeat {r}")
