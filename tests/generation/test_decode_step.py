"""model.decode_step is the one decode path: cached == uncached, every hook of every kind fires on every
step of generate / generate_stream / beams / return_cache, and weight edits of any kind show at once."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lens
from lens.generation import KVCache
from tests.generation._hf import archs, pair

PROMPT = torch.tensor([[5, 9, 14, 3], [7, 7, 21, 30]])
N_NEW = 6


@pytest.fixture
def model() -> lens.HookedTransformer:
    return pair("GPT2LMHeadModel")[1]


@pytest.mark.parametrize("arch", archs())
def test_decode_step_equals_forward_last_position(arch):
    _, model = pair(arch)
    follow = torch.randint(3, 97, (2, 5), generator=torch.Generator().manual_seed(4))
    cache = KVCache.for_model(model, 2, PROMPT.shape[1] + follow.shape[1])
    with torch.no_grad():
        steps = [model.decode_step(PROMPT, cache)]
        steps += [model.decode_step(follow[:, t : t + 1], cache) for t in range(follow.shape[1])]
        full = torch.cat((PROMPT, follow), 1)
        for t, got in enumerate(steps):
            expected = model(full[:, : PROMPT.shape[1] + t])[:, -1]
            torch.testing.assert_close(got, expected.float(), atol=1e-5, rtol=0, msg=f"{arch} step {t}")
            uncached = model.decode_step(full[:, : PROMPT.shape[1] + t])
            torch.testing.assert_close(got, uncached, atol=1e-5, rtol=0)
    assert cache.offset == full.shape[1]


def test_logits_to_keep(model):
    with torch.no_grad():
        full = model(PROMPT)
        torch.testing.assert_close(model(PROMPT, logits_to_keep=2), full[:, -2:], atol=0, rtol=0)
        assert torch.equal(model(PROMPT, logits_to_keep=0), full)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="logits_to_keep must be an int >= 0"):
            model(PROMPT, logits_to_keep=bad)
    with pytest.raises(ValueError, match="logits_to_keep must be 0"):
        model(PROMPT, return_type="loss", logits_to_keep=1)


def _greedy_reference(model: lens.HookedTransformer, n: int) -> torch.Tensor:
    """Greedy decoding by full forwards, no KV cache and no generate: the oracle."""
    seq = PROMPT.clone()
    with torch.no_grad():
        for _ in range(n):
            seq = torch.cat((seq, model(seq)[:, -1].argmax(-1, keepdim=True)), 1)
    return seq


RUNS = {
    "generate": lambda m: m.generate(PROMPT, N_NEW, stop_at_eos=False),
    "no_kv_cache": lambda m: m.generate(PROMPT, N_NEW, stop_at_eos=False, use_past_kv_cache=False),
    "stream": lambda m: torch.cat((PROMPT, torch.stack(list(m.generate_stream(PROMPT, N_NEW, stop_at_eos=False)), 1)), 1),  # noqa: E501
    "return_cache": lambda m: m.generate(PROMPT, N_NEW, stop_at_eos=False, return_cache=True, names_filter="hook_embed")[0],  # noqa: E501
    "beams": lambda m: m.generate(PROMPT, N_NEW, stop_at_eos=False, num_beams=2),
}  # fmt: skip
# forwards each run makes: prefill + one per new token after the first (+1: return_cache records the last token)
FORWARDS = {"generate": N_NEW, "no_kv_cache": N_NEW, "stream": N_NEW, "return_cache": N_NEW + 1, "beams": N_NEW}


@pytest.mark.parametrize("run", list(RUNS))
def test_pytorch_module_hooks_fire_and_act_on_every_step(model, run):
    """A forward hook that rewrites a block's output changes generate exactly as it changes model(tokens)."""
    calls = {"pre": 0, "fwd": 0, "root": 0}

    def pre(module, args):
        calls["pre"] += 1

    def scale(module, args, output):
        calls["fwd"] += 1
        return output * 0.5

    def root(module, args, kwargs, output):
        calls["root"] += 1

    handles = [
        model.blocks[1].mlp.register_forward_pre_hook(pre),
        model.blocks[0].register_forward_hook(scale),
        model.register_forward_hook(root, with_kwargs=True),
    ]
    try:
        out = RUNS[run](model)
        expected_calls = {k: FORWARDS[run] for k in calls}
        assert calls == expected_calls
        if run != "beams":
            calls.update(pre=0, fwd=0, root=0)
            assert torch.equal(out, _greedy_reference(model, N_NEW))
    finally:
        for h in handles:
            h.remove()
    assert not torch.equal(RUNS[run](model), out) or run == "beams"  # the hook changed the tokens


@pytest.mark.parametrize("run", list(RUNS))
def test_global_module_hooks_and_lens_hooks_fire_on_every_step(model, run):
    seen = {"global": 0, "lens": 0}

    def on_any(module, args, output):
        if module is model.blocks[1].attn:
            seen["global"] += 1

    def on_lens(x, hook):
        seen["lens"] += 1

    handle = nn.modules.module.register_module_forward_hook(on_any)
    try:
        with model.hooks(fwd_hooks=[("blocks.1.attn.hook_z", on_lens)]):
            RUNS[run](model)
    finally:
        handle.remove()
    assert seen == {"global": FORWARDS[run], "lens": FORWARDS[run]}


EDITS = {
    "data": lambda m: m.W_E.data.__setitem__((slice(None), slice(0, 4)), 0.0),
    "in_place": lambda m: m.unembed.weight.mul_(-1.0),
    "block_weight": lambda m: m.blocks[1].mlp.out_weight.mul_(3.0),
    "load_state_dict": lambda m: m.load_state_dict(
        {k: v * (1.5 if k.endswith("W_E") or k.endswith("embed.weight") else 1.0) for k, v in m.state_dict().items()}
    ),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_weight_edits_show_in_the_next_generate(edit):
    """No derived copy of any weight survives between calls: after any kind of edit generate equals the oracle."""
    _, model = pair("GPT2LMHeadModel")  # tied embeddings
    long_prompt = PROMPT.repeat(8, 1)
    model.generate(long_prompt, 10, stop_at_eos=False)  # a long call first (the old code kept a copy here)
    with torch.no_grad():
        EDITS[edit](model)
    got = model.generate(PROMPT, N_NEW, stop_at_eos=False)
    assert torch.equal(got, _greedy_reference(model, N_NEW))


def test_generate_config_and_keywords_are_one_call(model):
    cfg = lens.generation.GenerationConfig(max_new_tokens=5, do_sample=True, top_k=5, seed=3, stop_at_eos=False)
    a = model.generate(PROMPT, config=cfg)
    b = model.generate(PROMPT, 5, do_sample=True, top_k=5, seed=3, stop_at_eos=False)
    assert torch.equal(a, b)
    c = model.generate(PROMPT, config=cfg, do_sample=False)  # keywords override the config
    assert torch.equal(c, model.generate(PROMPT, 5, stop_at_eos=False))
    streamed = torch.stack(list(model.generate_stream(PROMPT, config=cfg)), 1)
    assert torch.equal(streamed, a[:, PROMPT.shape[1] :])
    assert cfg.max_new_tokens == 5 and cfg.do_sample  # overrides made a new config


@pytest.mark.parametrize(
    "bad,closest", [("top_pp", "top_p"), ("max_tokens", "max_new_tokens"), ("temprature", "temperature")]
)
def test_unknown_setting_names_the_closest(model, bad, closest):
    with pytest.raises(TypeError, match=f"unknown generation setting '{bad}'; did you mean '{closest}'"):
        model.generate(PROMPT, 3, **{bad: 1})
    with pytest.raises(TypeError, match=f"did you mean '{closest}'"):
        lens.generation.GenerationConfig(**{bad: 1})
    with pytest.raises(TypeError, match=f"did you mean '{closest}'"):
        model.generate_stream(PROMPT, 3, **{bad: 1})


def test_config_is_validated_when_made():
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        lens.generation.GenerationConfig(top_p=2.0)
    with pytest.raises(TypeError, match="config must be a GenerationConfig"):
        lens.generation.config.resolve({"top_p": 0.5}, {})
    with pytest.raises(TypeError, match="prepend_bos must be None or a bool"):
        lens.generation.GenerationConfig(prepend_bos="yes")
    with pytest.raises(ValueError, match="generate_stream does not support beam search"):
        pair("GPT2LMHeadModel")[1].generate_stream(PROMPT, 3, num_beams=2)


def test_decode_step_checks_its_input(model):
    with pytest.raises(ValueError, match="token id 1000 is outside the vocabulary"):
        model.decode_step(torch.tensor([[1000]]))
    cache = KVCache.for_model(model, 2, 4)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model.decode_step(PROMPT, cache, attention_mask=torch.ones(2, 3))
