"""Quantized KV caches (``kv_cache_dtype`` None / ``"int8"`` / ``"int4"``): memory, logit error, perplexity.

Three workloads, all teacher-forced (a short prefill, then one token per step through the cache, so every
step after the prefill reads its history back from the quantized store and both caches see the same tokens):

- **the embedded ``gelu-4l`` model** (4 layers, d_head 32) over the held-out standard-library text (files
  the zoo models never trained on, :func:`lens.zoo.train_sae.held_out_contexts`): perplexity of the bytes
  after the prefill with each cache, its delta to the fp32 cache, max/mean |logit difference| and greedy
  (argmax) agreement; also for ``attn-only-2l``;
- **every registered family**, tiny random-weight models (``tests.tiny``, d_head 8, weights std 0.2, so
  keys are large and attention sharp), batch 2, 6-token prefill + 14 steps: max |logit difference| and
  argmax agreement, int8 and int4 (the numbers ``tests/generation/test_kv_cache*.py`` bound);
- **cache memory** (the allocated tensors, scales included) relative to fp32 for each shape.

Accuracy only: no timing, so the numbers do not depend on machine load.

Run (from the repository root): ``.venv/bin/python -m benchmarks.bench_kv_cache [--contexts N] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from lens.generation import KVCache

DTYPES = (None, "int8", "int4")


def _name(dtype: str | None) -> str:
    return dtype or "fp32"


@torch.inference_mode()
def teacher_forced(model, tokens: torch.Tensor, n_prefill: int, dtype: str | None) -> tuple[torch.Tensor, int]:
    """(logits predicting positions ``n_prefill .. end`` [batch, steps, vocab], the cache's bytes)."""
    cache = KVCache.for_model(model, tokens.shape[0], tokens.shape[1], kv_cache_dtype=dtype)
    out = [model(tokens[:, :n_prefill], past_kv_cache=cache)[:, -1]]
    for t in range(n_prefill, tokens.shape[1] - 1):
        out.append(model(tokens[:, t : t + 1], past_kv_cache=cache)[:, -1])
    return torch.stack(out, 1).float(), cache.nbytes


def compare(model, tokens: torch.Tensor, n_prefill: int) -> dict:
    """Per cache dtype: memory ratio, perplexity of ``tokens[:, n_prefill:]`` and logit error vs fp32."""
    target = tokens[:, n_prefill:]
    runs = {d: teacher_forced(model, tokens, n_prefill, d) for d in DTYPES}
    ref, ref_bytes = runs[None]
    out = {}
    for d, (logits, nbytes) in runs.items():
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="mean").item()
        diff = (logits - ref).abs()
        out[_name(d)] = {
            "memory_ratio": nbytes / ref_bytes,
            "perplexity": math.exp(nll),
            "max_logit_diff": diff.max().item(),
            "mean_logit_diff": diff.mean().item(),
            "argmax_agreement": (logits.argmax(-1) == ref.argmax(-1)).float().mean().item(),
        }
    for d in out:
        out[d]["perplexity_delta"] = out[d]["perplexity"] - out["fp32"]["perplexity"]
    out["logit_scale"] = ref.abs().max().item()
    return out


def zoo_report(n_contexts: int, context: int, prefill: int) -> dict:
    import lens.zoo
    from lens.zoo.train_sae import held_out_contexts

    tokens = held_out_contexts(n_contexts, context)
    report = {"contexts": n_contexts, "context_size": context, "prefill": prefill}
    for name in ("gelu-4l", "attn-only-2l"):
        model = lens.zoo.load(name).eval()
        report[name] = {"d_head": model.cfg.d_head, **compare(model, tokens, prefill)}
    return report


def family_report() -> dict:
    from tests.tiny import archs, pair

    tokens = torch.randint(3, 97, (2, 20), generator=torch.Generator().manual_seed(3))
    out = {}
    for arch in archs():
        _, model = pair(arch)
        r = compare(model, tokens, 6)
        out[arch] = {"d_head": model.cfg.d_head, "logit_scale": r["logit_scale"]}
        out[arch].update(
            {
                d: {k: r[d][k] for k in ("memory_ratio", "max_logit_diff", "argmax_agreement")}
                for d in r
                if d != "logit_scale"
            }
        )
    return out


def gpt2_small_report(steps: int) -> dict:
    """The GPT-2-small shape (random weights std 0.02): a 32-token random prompt, then ``steps`` steps."""
    from benchmarks._common import from_hf_model, gpt2_small

    model = from_hf_model(gpt2_small()).eval()
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 50257, (1, 32), generator=g)
    return {"d_head": model.cfg.d_head, **on_greedy_continuation(model, prompt, steps)}


def on_greedy_continuation(model, prompt: torch.Tensor, new: int) -> dict:
    """:func:`compare` on ``prompt`` and ``new`` tokens of the model's own greedy continuation."""
    return compare(model, model.generate(prompt, new, stop_at_eos=False), prompt.shape[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", type=int, default=64, help="held-out contexts for the zoo models (default 64)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 4 contexts, 16 GPT-2 steps")
    args = ap.parse_args()
    n = 4 if args.quick else args.contexts
    report = {
        "zoo": zoo_report(n, 128, 16),
        "families": family_report(),
        "gpt2_small": gpt2_small_report(16 if args.quick else 128),
    }
    print_report(report)
    print(json.dumps(report))


def print_report(report: dict) -> None:
    z = report["zoo"]
    print(
        f"Embedded models over {z['contexts']} held-out stdlib contexts of {z['context_size']} bytes, "
        f"{z['prefill']}-token prefill, then one token per step"
    )
    print("| model | cache | memory vs fp32 | perplexity | delta | max logit diff | mean | argmax agreement |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("gelu-4l", "attn-only-2l"):
        for d in map(_name, DTYPES):
            r = z[name][d]
            print(
                f"| {name} | {d} | {r['memory_ratio']:.3f}x | {r['perplexity']:.4f} | {r['perplexity_delta']:+.4f} "
                f"| {r['max_logit_diff']:.4f} | {r['mean_logit_diff']:.5f} | {r['argmax_agreement']:.4f} |"
            )
    g = report["gpt2_small"]
    print(f"\nGPT-2-small shape, 32-token prompt + its greedy continuation, logits up to {g['logit_scale']:.1f}")
    print("| cache | memory vs fp32 | max logit diff | mean | argmax agreement |")
    print("|---|---|---|---|---|")
    for d in map(_name, DTYPES):
        r = g[d]
        print(
            f"| {d} | {r['memory_ratio']:.3f}x | {r['max_logit_diff']:.4f} | {r['mean_logit_diff']:.5f} "
            f"| {r['argmax_agreement']:.4f} |"
        )
    print("\nTiny random-weight model of each family, batch 2, 6-token prefill + 14 steps")
    print(
        "| family | d_head | logits up to | int8 max diff | int8 agreement "
        "| int4 memory | int4 max diff | int4 agreement |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for arch, r in report["families"].items():
        a, b = r["int8"], r["int4"]
        print(
            f"| {arch} | {r['d_head']} | {r['logit_scale']:.2f} | {a['max_logit_diff']:.4f} "
            f"| {a['argmax_agreement']:.3f} "
            f"| {b['memory_ratio']:.4f}x | {b['max_logit_diff']:.4f} | {b['argmax_agreement']:.3f} |"
        )


if __name__ == "__main__":
    main()
