"""generate / generate_stream: return types, streaming, hooks on every step, return_cache, logprobs."""

from __future__ import annotations

import pytest
import torch

import lens
from lens.generation import GenerationOutput
from tests.generation._hf import pair


@pytest.fixture(scope="module")
def model() -> lens.HookedTransformer:
    cfg = lens.TransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_vocab=259, n_ctx=64, default_prepend_bos=True,
        positional="rotary", normalization="RMS", act_fn="silu", gated_mlp=True, n_key_value_heads=2,
        window_size=4,
    )  # fmt: skip
    m = lens.HookedTransformer(cfg, tokenizer=lens.Tokenizer.byte_level(), seed=3)
    with torch.no_grad():
        m.unembed.weight.mul_(20)  # peaked logits
    return m.eval()


def test_return_kinds_follow_the_input(model):
    assert isinstance(model.generate("Hi", 4, stop_at_eos=False), str)
    out = model.generate(["Hi", "Hello"], 4, stop_at_eos=False)
    assert isinstance(out, list) and len(out) == 2 and out[0].startswith("Hi") and out[1].startswith("Hello")
    toks = model.to_tokens("Hi")
    assert model.generate(toks, 4, stop_at_eos=False).shape == (1, 7)
    assert model.generate(toks[0], 4, stop_at_eos=False).shape == (7,)
    assert model.generate("Hi", 4, stop_at_eos=False, return_type="tokens").shape == (1, 7)
    text = model.generate("Hi", 4, stop_at_eos=False)
    assert model.generate(toks[0], 4, stop_at_eos=False, return_type="str") == "<|bos|>" + text  # the user's BOS stays
    assert torch.equal(model.generate(toks, 0), toks)


def test_string_output_is_prompt_plus_continuation(model):
    prompts = ["Hi", "Hello there"]
    tokens = model.generate(prompts, 6, stop_at_eos=False, return_type="tokens")
    texts = model.generate(prompts, 6, stop_at_eos=False)
    width = tokens.shape[1] - 6
    for row, (prompt, text) in enumerate(zip(prompts, texts)):
        n_prompt = len(prompt.encode()) + 1  # + BOS
        assert torch.equal(tokens[row, width - n_prompt], torch.tensor(256))  # left padding, then BOS
        assert text == prompt + model.tokenizer.decode(tokens[row, width:])


def test_right_padding_is_moved_left(model):
    left = model.generate(["Hi", "Hello there"], 5, stop_at_eos=False, return_type="tokens")
    right = model.generate(["Hi", "Hello there"], 5, stop_at_eos=False, return_type="tokens", padding_side="right")
    assert torch.equal(left, right)


def test_stream_matches_generate(model):
    ref = model.generate(["Hi", "Hello there"], 8, stop_at_eos=False, return_type="tokens")
    steps = list(model.generate_stream(["Hi", "Hello there"], 8, stop_at_eos=False, return_type="tokens"))
    assert len(steps) == 8 and all(s.shape == (2,) for s in steps)
    assert torch.equal(torch.stack(steps, 1), ref[:, -8:])
    text = "".join(model.generate_stream("Hi", 8, stop_at_eos=False))
    assert "Hi" + text == model.generate("Hi", 8, stop_at_eos=False)
    pieces = list(model.generate_stream("Hi", 3, stop_at_eos=False, output_logprobs=True))
    assert len(pieces) == 3 and pieces[0][1].shape == (1,)
    with pytest.raises(ValueError, match="temperature"):  # checked at the call, not at the first next()
        model.generate_stream("Hi", 3, do_sample=True, temperature=0)


def test_eos_stops_rows_and_fills(model):
    free = model.generate(["Hi", "Hello there"], 8, stop_at_eos=False, return_type="tokens")
    eos = int(free[0, -6])  # row 0's third generated token
    out, logprobs, _ = model.generate(
        ["Hi", "Hello there"], 8, eos_token_id=[eos, 258], return_type="tokens", output_logprobs=True
    )
    row0 = out[0, -8:]
    assert row0[2] == eos and (row0[3:] == 258).all()  # the tokenizer's pad fills
    assert (logprobs[0, 3:] == 0).all() and (logprobs[0, :3] < 0).all()
    texts = model.generate(["Hi", "Hello there"], 8, eos_token_id=eos)
    assert texts[0] == "Hi" + model.tokenizer.decode(row0[:3])


def test_hooks_fire_on_every_step_with_pos_one(model):
    seen = []
    with model.hooks(fwd_hooks=[("hook_embed", lambda x, hook: seen.append(x.shape[1]))]):
        model.generate("Hey", 5, stop_at_eos=False)
    assert seen == [4, 1, 1, 1, 1]


@pytest.mark.parametrize("use_cache", [True, False])
def test_ablation_hooks_change_generation_identically(model, use_cache):
    def ablate(z, hook):
        z[:, :, 0] = 0.0
        return z

    plain = model.generate("Hello", 10, stop_at_eos=False, return_type="tokens")
    with model.hooks(fwd_hooks=[("blocks.1.attn.hook_z", ablate), ("blocks.0.attn.hook_z", ablate)]):
        ablated = model.generate("Hello", 10, stop_at_eos=False, return_type="tokens", use_past_kv_cache=use_cache)
        ref = model.generate("Hello", 10, stop_at_eos=False, return_type="tokens", use_past_kv_cache=False)
    assert torch.equal(ablated, ref) and not torch.equal(ablated, plain)


def two_prompts(seed: int, length: int, padded_row: int, n_pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two random prompts of ``length`` tokens; ``padded_row`` is left-padded by ``n_pad`` (mask 0)."""
    tokens = torch.randint(3, 97, (2, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(2, length, dtype=torch.long)
    mask[padded_row, :n_pad] = 0
    return tokens, mask


@pytest.mark.parametrize("arch", ["MistralForCausalLM", "GPT2LMHeadModel"])
def test_return_cache_equals_one_forward_over_the_output(arch):
    _, m = pair(arch)
    tokens, mask = two_prompts(seed=4, length=6, padded_row=1, n_pad=2)
    names = ["hook_embed", "blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern", "blocks.1.attn.hook_attn_scores"]
    out, _, cache = m.generate(tokens, 9, attention_mask=mask, stop_at_eos=False, return_cache=True, names_filter=names)
    full_mask = torch.cat([mask, torch.ones(2, 9, dtype=torch.long)], 1)
    _, ref = m.run_with_cache(out, attention_mask=full_mask, names_filter=names)
    real = full_mask.bool()
    for name in names:
        assert cache[name].shape == ref[name].shape, name
        if "attn" in name:  # compare real queries; key axis: what each saw, 0 / -inf elsewhere
            got, want = cache[name].transpose(1, 2)[real], ref[name].transpose(1, 2)[real]
            want = want.masked_fill(~real.repeat_interleave(real.sum(1), 0)[:, None, :], want.min().item())
            got = got.masked_fill(~real.repeat_interleave(real.sum(1), 0)[:, None, :], want.min().item())
        else:
            got, want = cache[name][real], ref[name][real]
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0, msg=name)
    assert cache["blocks.0.attn.hook_pattern"].shape[-2:] == (15, 15)
    cache["hook_embed"][0, 0] = 0.0  # an ordinary tensor, not an inference-mode one


def test_return_cache_with_no_new_tokens_records_the_prompt(model):
    toks = model.to_tokens("Hey")
    out, _, cache = model.generate(toks, 0, return_cache=True, names_filter="blocks.0.hook_resid_post")
    assert torch.equal(out, toks) and cache["resid_post", 0].shape == (1, 4, 32)


def test_logprobs_are_the_models_log_softmax(model):
    out, logprobs, cache = model.generate("Hi", 6, stop_at_eos=False, output_logprobs=True, return_type="tokens")
    assert cache is None and isinstance(out, torch.Tensor)
    ref = model(out).log_softmax(-1)[0, -7:-1].gather(-1, out[0, -6:, None]).squeeze(-1)
    torch.testing.assert_close(logprobs[0], ref, atol=1e-5, rtol=0)
    beams = model.generate("Hi", 6, stop_at_eos=False, output_logprobs=True, num_beams=3)
    assert isinstance(beams, GenerationOutput) and beams.logprobs.shape == (1, 6)


def test_max_new_tokens_none_fills_the_context(model):
    prompt = torch.randint(0, 256, (1, 60), generator=torch.Generator().manual_seed(0))
    assert model.generate(prompt, stop_at_eos=False).shape == (1, 64)


def test_int8_generation_runs_and_mostly_agrees(model):
    a = model.generate("Hello", 10, stop_at_eos=False, return_type="tokens")
    b = model.generate("Hello", 10, stop_at_eos=False, return_type="tokens", kv_cache_dtype="int8")
    assert a.shape == b.shape and (a == b).float().mean() > 0.5


def test_verbose_shows_progress(model, capsys):
    model.generate("Hi", 3, stop_at_eos=False, verbose=True)
    assert "3/3" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["GPT2LMHeadModel", "LlamaForCausalLM"])
def test_return_cache_is_the_same_without_the_kv_cache(arch):
    _, m = pair(arch)
    tokens, mask = two_prompts(seed=8, length=5, padded_row=0, n_pad=2)
    names = ["hook_embed", "blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern"]
    kw = dict(attention_mask=mask, stop_at_eos=False, return_cache=True, names_filter=names)
    out, _, cached = m.generate(tokens, 6, **kw)
    out2, _, uncached = m.generate(tokens, 6, use_past_kv_cache=False, **kw)
    assert torch.equal(out, out2)
    real = torch.cat([mask, torch.ones(2, 6, dtype=torch.long)], 1).bool()
    for name in names:
        assert cached[name].shape == uncached[name].shape, name
        a, b = cached[name], uncached[name]
        if "attn" in name:  # [b, head, q, k]: compare the real queries
            a, b = a.transpose(1, 2), b.transpose(1, 2)
        torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=0, msg=name)


def test_repetition_penalty_ignores_left_padding_in_generate():
    """Pads are not in a row's history: each row of a left-padded batch equals the row run alone."""
    _, m = pair("LlamaForCausalLM")
    tokens = torch.randint(3, 97, (3, 6), generator=torch.Generator().manual_seed(9))
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :1] = 0
    kw = dict(stop_at_eos=False, repetition_penalty=1.8)
    pad = int(m.generate(tokens[1, 3:], 1, **kw)[-1])  # row 1's first pick: penalising pads would change it
    tokens = tokens.masked_fill(mask == 0, pad)
    batch = m.generate(tokens, 8, attention_mask=mask, **kw)
    with_pads = m.generate(tokens[1:2], 8, attention_mask=torch.ones(1, 6, dtype=torch.long), **kw)
    assert int(with_pads[0, 6]) != pad  # the test can fail: pads in the history would change row 1
    for row in range(3):
        alone = m.generate(tokens[row, mask[row].bool()], 8, **kw)
        assert torch.equal(batch[row, 6:], alone[-8:]), row


@pytest.mark.parametrize("prepend_bos", [None, True, False])
def test_prepend_bos_decides_the_prompt_tokens(model, prepend_bos):
    """A string prompt is tokenized as ``to_tokens(..., prepend_bos)`` does; the continuation follows it."""
    out = model.generate("Hey", 4, stop_at_eos=False, prepend_bos=prepend_bos, return_type="tokens")
    prompt = model.to_tokens("Hey", prepend_bos=prepend_bos)
    has_bos = prepend_bos is not False  # the fixture's default_prepend_bos is True
    assert (int(prompt[0, 0]) == model.tokenizer.bos_token_id) == has_bos
    assert torch.equal(out[:, : prompt.shape[1]], prompt)
    assert torch.equal(out, model.generate(prompt, 4, stop_at_eos=False))
