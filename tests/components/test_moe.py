"""The mixture-of-experts MLP: exact routing math, hooks that see what they name, edits that reroute, and
the router against Hugging Face's own router logits."""

from __future__ import annotations

import pytest
import torch

from lens import HookedTransformer, TransformerConfig
from lens.components.moe import MoE

SIZES = dict(n_layers=2, d_model=16, n_heads=2, d_mlp=12, d_vocab=40, n_ctx=32, positional="rotary")


def _cfg(**kw) -> TransformerConfig:
    fields = dict(SIZES, normalization="RMS", gated_mlp=True, act_fn="silu", num_experts=4, experts_per_token=2)
    return TransformerConfig(**{**fields, **kw})


def _moe(seed=0, **kw) -> MoE:
    torch.manual_seed(seed)
    moe = MoE(_cfg(**kw))
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.5)
    return moe


def _dense_reference(moe: MoE, x: torch.Tensor, indices=None) -> torch.Tensor:
    """Every expert on every token, then the routed mixture: the definition, with no gathering."""
    flat = x.reshape(-1, x.shape[-1])
    probs = torch.softmax(flat @ moe.W_gate, dim=-1)
    if indices is None:
        indices = probs.topk(moe.cfg.experts_per_token, dim=-1).indices
    top = probs.gather(-1, indices)
    if moe.cfg.moe_renormalize:
        top = top / top.sum(-1, keepdim=True)
    every = torch.stack([expert(flat) for expert in moe.experts], dim=1)  # [tokens, experts, d_model]
    chosen = every.gather(1, indices[..., None].expand(-1, -1, flat.shape[-1]))
    return (chosen * top[..., None]).sum(1).view(x.shape)


@pytest.mark.parametrize("renormalize", [True, False])
def test_output_is_the_routed_mixture_of_experts(renormalize):
    moe = _moe(moe_renormalize=renormalize)
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(moe(x), _dense_reference(moe, x), atol=1e-6, rtol=1e-5)


def test_each_expert_runs_once_per_forward_on_only_its_tokens():
    moe = _moe()
    x = torch.randn(4, 9, 16)
    flat = x.reshape(-1, 16)
    chosen = torch.softmax(flat @ moe.W_gate, -1).topk(2, -1).indices
    seen = {}
    for e, expert in enumerate(moe.experts):
        expert.register_forward_hook(lambda m, args, out, e=e: seen.setdefault(e, []).append(args[0]))
    with torch.no_grad():
        moe(x)
    for e, calls in seen.items():
        assert len(calls) == 1, f"expert {e} ran {len(calls)} times: the loop must be over experts, not tokens"
        tokens = (chosen.T == e).nonzero(as_tuple=True)[1]
        torch.testing.assert_close(calls[0], flat[tokens], atol=0, rtol=0)
    assert set(seen) == set(chosen.unique().tolist())  # experts nobody chose are skipped when unhooked


def test_hooks_see_router_probabilities_choices_and_per_expert_tokens():
    model = HookedTransformer(_cfg(), seed=1)
    toks = torch.randint(0, 40, (2, 6))
    _, cache = model.run_with_cache(toks)
    x = cache["blocks.0.ln2.hook_normalized"].reshape(-1, 16)
    mlp = model.blocks[0].mlp
    probs = torch.softmax(x @ mlp.W_gate, -1)
    torch.testing.assert_close(cache["blocks.0.mlp.hook_expert_weights"], probs)
    indices = cache["blocks.0.mlp.hook_expert_indices"]
    assert indices.shape == (12, 2)
    assert torch.equal(indices, probs.topk(2, -1).indices)
    total = 0
    for e in range(4):
        slot, tokens = (indices.T == e).nonzero(as_tuple=True)  # slot-major: first choices, then second
        assert torch.equal(slot, slot.sort().values)
        gate = cache[f"blocks.0.mlp.experts.{e}.hook_gate"]
        assert gate.shape == (len(tokens), 12)  # even an expert with no tokens fires, with 0 rows
        torch.testing.assert_close(gate, x[tokens] @ mlp.experts[e].W_gate)
        torch.testing.assert_close(cache[f"blocks.0.mlp.experts.{e}.hook_pre"], x[tokens] @ mlp.experts[e].W_in)
        total += len(tokens)
    assert total == 12 * 2
    # the expert outputs recombine into hook_mlp_out exactly
    torch.testing.assert_close(
        cache["blocks.0.hook_mlp_out"], _dense_reference(mlp, cache["blocks.0.ln2.hook_normalized"]), atol=1e-6, rtol=0
    )


def test_editing_the_indices_reroutes_tokens():
    model = HookedTransformer(_cfg(), seed=2)
    toks = torch.randint(0, 40, (2, 6))
    forced = torch.tensor([3, 1]).expand(12, 2).clone()
    _, cache = model.run_with_cache(toks)
    ln2 = cache["blocks.1.ln2.hook_normalized"]
    with model.hooks([("blocks.1.mlp.hook_expert_indices", lambda t, hook: forced)]):
        _, edited = model.run_with_cache(toks)
    expected = _dense_reference(model.blocks[1].mlp, ln2, indices=forced)
    torch.testing.assert_close(edited["blocks.1.hook_mlp_out"], expected, atol=1e-6, rtol=0)
    assert edited["blocks.1.mlp.experts.0.hook_pre"].shape[0] == 0
    assert edited["blocks.1.mlp.experts.3.hook_pre"].shape[0] == 12


def test_editing_the_probabilities_changes_the_choice():
    model = HookedTransformer(_cfg(), seed=3)
    toks = torch.randint(0, 40, (1, 5))

    def prefer_0_and_2(probs, hook):
        probs = probs.clone()
        probs[:, 0] += 10
        probs[:, 2] += 5
        return probs

    with model.hooks([("blocks.0.mlp.hook_expert_weights", prefer_0_and_2)]):
        _, cache = model.run_with_cache(toks)
    assert (cache["blocks.0.mlp.hook_expert_indices"] == torch.tensor([0, 2])).all()


@pytest.mark.parametrize(
    ("bad", "words"),
    [(torch.tensor([4, 0]), "valid experts are 0..3"), (torch.tensor([1, 1]), "same expert twice")],
)
def test_invalid_rerouting_raises(bad, words):
    model = HookedTransformer(_cfg(), seed=4)
    toks = torch.randint(0, 40, (1, 3))
    with pytest.raises(ValueError, match=words):
        model.run_with_hooks(toks, fwd_hooks=[("blocks.0.mlp.hook_expert_indices", lambda t, hook: bad.expand(3, 2))])
    assert not model.blocks[0].mlp.hook_expert_indices.has_hooks  # removed although the forward raised


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (dict(experts_per_token=5), "experts_per_token=5 must be <= num_experts=4"),
        (dict(experts_per_token=None), "needs both num_experts and experts_per_token"),
        (dict(num_experts=0), "num_experts must be positive"),
        (dict(gated_mlp=False), "needs gated_mlp=True"),
    ],
)
def test_bad_moe_config_raises(change, words):
    with pytest.raises(ValueError, match=words):
        _cfg(**change)


def test_hooks_fire_at_every_generate_step():
    model = HookedTransformer(_cfg(), seed=5)
    counts: dict[str, list[int]] = {}

    def record(t, hook):
        counts.setdefault(hook.name, []).append(t.shape[0])

    names = ["blocks.0.mlp.hook_expert_weights", "blocks.1.mlp.hook_expert_indices"]
    names += [f"blocks.1.mlp.experts.{e}.hook_post" for e in range(4)]
    with model.hooks([(n, record) for n in names]):
        model.generate(torch.randint(0, 40, (1, 4)), max_new_tokens=3, do_sample=False, stop_at_eos=False)
    assert counts[names[0]] == [4, 1, 1]  # the prompt's 4 tokens, then one per decode step
    assert counts[names[1]] == [4, 1, 1]
    per_step = [sum(counts[f"blocks.1.mlp.experts.{e}.hook_post"][s] for e in range(4)) for s in range(3)]
    assert per_step == [8, 2, 2]  # top-2: every token reaches two experts


def test_router_matches_hugging_face_router_logits():
    pytest.importorskip("transformers")
    from tests.tiny import hf_tokens, saved

    directory, hf = saved("mixtral")
    model = HookedTransformer.from_pretrained(directory)
    toks = hf_tokens()
    with torch.no_grad():
        router_logits = hf(toks, output_router_logits=True).router_logits
    _, cache = model.run_with_cache(toks)
    for layer, logits in enumerate(router_logits):
        torch.testing.assert_close(
            cache[f"blocks.{layer}.mlp.hook_expert_weights"], torch.softmax(logits.float(), -1), atol=1e-5, rtol=0
        )
