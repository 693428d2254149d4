"""In-place edits in hooks with gradients on, as TransformerLens allows (Main_Demo: ``value[:, :, head, :] = 0.``).

Every hook point of a block (and the top-level ones) of several architectures gets a hook that edits its
activation in place, under autograd with parameters that require grad. The oracle is the same edit done out
of place (the hook returns an edited copy): the loss and every parameter's gradient must be equal, so the
in-place edit took effect and ``backward()`` ran through it. Before the fix, q/k/v (views of one split),
the pattern (kept by softmax), z (kept by fused attention), norm scales (kept by sqrt) and relu's output
raised "a view ... is being modified inplace" or "modified by an inplace operation" here.
"""

from __future__ import annotations

import pytest
import torch

import lens
from tests.tiny import tiny_cfg

FLAGS = dict(use_attn_result=True, use_split_qkv_input=True, use_hook_mlp_in=True)
# family -> (config, which of its hook points to test: the ones this architecture adds over the rows above)
CONFIGS = {
    "gpt2-flags": (tiny_cfg("gpt2", **FLAGS), ""),
    "gpt2-attn_in": (tiny_cfg("gpt2", use_attn_in=True), "hook_attn_in"),
    "llama-gqa": (tiny_cfg("llama"), "attn."),
    "llama-ungrouped-split": (tiny_cfg("llama", ungroup_grouped_query_attention=True, use_split_qkv_input=True), ""),
    "neox": (tiny_cfg("neox"), "attn.hook_rot"),
    "relu": (tiny_cfg("gpt2", act_fn="relu"), "mlp."),
    "solu": (tiny_cfg("gpt2", act_fn="solu_ln"), "mlp."),
    "solu-rms": (tiny_cfg("gpt2", act_fn="solu_ln", normalization="RMS"), "mlp."),
}


def _names(cfg: lens.TransformerConfig, part: str) -> list[str]:
    model = lens.HookedTransformer(cfg)
    names = [n for n in model.hook_dict if not n.startswith("blocks.") or n.startswith("blocks.0.")]
    return [n for n in names if part in n and n != "hook_tokens"]


CASES = [
    pytest.param(family, name, id=f"{family}:{name}")
    for family, (cfg, part) in CONFIGS.items()
    for name in _names(cfg, part)
]
_MODELS: dict[str, lens.HookedTransformer] = {}


def model_for(family: str) -> lens.HookedTransformer:
    if family not in _MODELS:
        model = lens.HookedTransformer(CONFIGS[family][0])
        model.init_weights(seed=0, std=0.3)  # O(1) activations, so every edit moves the loss visibly
        _MODELS[family] = model
    return _MODELS[family]


TOKENS = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(0))


def _edit_inplace(x, hook):
    x[0, 1, ..., 0] += 1.0  # an in-place write through a view of the activation, as notebooks do
    return None


def _edit_inplace_return(x, hook):
    x[0, 1, ..., 0] += 1.0
    return x


def _edit_copy(x, hook):
    out = x.clone()
    out[0, 1, ..., 0] += 1.0
    return out


def _loss_and_grads(model, name, fn):
    model.zero_grad(set_to_none=True)
    loss = model.run_with_hooks(TOKENS, return_type="loss", fwd_hooks=[(name, fn)])
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.mark.parametrize("family,name", CASES)
def test_inplace_edit_takes_effect_and_backward_works(family, name):
    model = model_for(family)
    assert all(p.requires_grad for p in model.parameters())
    clean = model(TOKENS, return_type="loss").detach()
    ref_loss, ref_grads = _loss_and_grads(model, name, _edit_copy)
    assert abs(float(ref_loss - clean)) > 1e-4, f"the edit on {name} should change the loss"
    for fn in (_edit_inplace, _edit_inplace_return):
        loss, grads = _loss_and_grads(model, name, fn)
        torch.testing.assert_close(loss, ref_loss)
        assert grads.keys() == ref_grads.keys()
        for key in grads:
            torch.testing.assert_close(grads[key], ref_grads[key], msg=lambda m, key=key: f"{key}: {m}")
    torch.testing.assert_close(model(TOKENS, return_type="loss").detach(), clean)  # hooks removed


def test_main_demo_zero_value_head_with_grad():
    """Main_Demo's idiom verbatim: zero one head's values in place, grad on; the head's output is then zero."""
    model = model_for("gpt2-flags")
    seen = {}

    def ablate(value, hook, head=1):
        value[:, :, head, :] = 0.0
        return value

    def keep_z(z, hook):
        seen["z"] = z.detach().clone()

    loss = model.run_with_hooks(
        TOKENS, return_type="loss", fwd_hooks=[("blocks.0.attn.hook_v", ablate), ("blocks.0.attn.hook_z", keep_z)]
    )
    loss.backward()
    assert torch.count_nonzero(seen["z"][:, :, 1]) == 0  # z of head 1 is a mix of zero values
    assert torch.count_nonzero(seen["z"][:, :, 0]) > 0
    assert model.blocks[0].attn.qkv_weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_read_only_hooks_get_the_activation_itself():
    """Copies are for hooks that may edit, under grad: caching hooks (read-only) and no-grad runs see no copy."""
    model = model_for("gpt2-flags")
    point = model.hook_dict["blocks.0.attn.hook_pattern"]
    assert point.clone_for_edit
    _, cache = model.run_with_cache(TOKENS, names_filter="blocks.0.attn.hook_pattern")
    with torch.no_grad():
        _, cache_ng = model.run_with_cache(TOKENS, names_filter="blocks.0.attn.hook_pattern")
    torch.testing.assert_close(cache["pattern", 0], cache_ng["pattern", 0])


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_inplace_edits_with_grad_match_transformer_lens(family):
    pytest.importorskip("transformer_lens", reason="TransformerLens is an optional oracle (install it to compare)")
    from tests.compat._tl import tl_and_lens, tokens_for

    tl_model, model = tl_and_lens(family)
    tokens = tokens_for(model)

    def ablate(value, hook):
        value[:, :, 1, :] = 0.0
        return value

    def scale_pattern(pattern, hook):
        pattern[:, 0] *= 0.5

    hooks = [("blocks.0.attn.hook_v", ablate), ("blocks.1.attn.hook_pattern", scale_pattern)]
    results = []
    for m in (tl_model, model):
        m.zero_grad(set_to_none=True)
        loss = m.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks)
        loss.backward()
        results.append((loss.detach(), m.blocks[0].ln1.w.grad.clone()))  # upstream of both edits
        m.zero_grad(set_to_none=True)
    (tl_loss, tl_grad), (loss, grad) = results
    torch.testing.assert_close(loss, tl_loss, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grad, tl_grad, atol=1e-5, rtol=1e-4)
    assert abs(float(loss - model(tokens, return_type="loss").detach())) > 1e-4  # the edits changed the loss
