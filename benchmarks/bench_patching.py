"""Residual-stream activation patching over every (layer, position): batched lens vs a per-site loop.

GPT-2-small shape (12 layers, d_model 768, 12 heads, vocab 50257), random weights, fp32 CPU, one
prompt of 20 tokens (corrupted at 3 positions), metric = logit difference at the last position:
240 patch sites.

- ``loop``: one forward per site (``run_with_hooks`` from the tokens, a hook writing the clean value),
  as TransformerLens's ``get_act_patch_resid_pre`` does.
- ``lens``: ``lens.patching.get_act_patch_resid_pre`` at the default batch size (batched forwards
  starting at the patched layer). Target: >= 3x faster than ``loop``.
- ``lens_from_tokens``: the same batching with ``start_at_layer=False`` (batching alone).
- a batch-size sweep, and TransformerLens's ``patching.get_act_patch_resid_pre`` when installed.

Run: ``.venv/bin/python -m benchmarks.bench_patching [--quick]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time

import torch

import lens
from lens import patching

N_POS, ANSWER, WRONG = 20, 1000, 2000


def gpt2_small_lens() -> lens.HookedTransformer:
    cfg = lens.TransformerConfig(
        n_layers=12, d_model=768, n_heads=12, d_vocab=50257, n_ctx=1024, act_fn="gelu_new", model_name="gpt2-shape"
    )
    return lens.HookedTransformer(cfg, seed=0).eval()


def metric(logits: torch.Tensor) -> torch.Tensor:  # per-row
    return logits[:, -1, ANSWER] - logits[:, -1, WRONG]


@torch.no_grad()
def per_site_loop(model, corrupted, clean_cache) -> torch.Tensor:
    out = torch.empty(model.cfg.n_layers, corrupted.shape[1])
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.hook_resid_pre"
        clean = clean_cache[name]
        for pos in range(corrupted.shape[1]):

            def hook(act, hook, pos=pos, clean=clean):
                act[:, pos] = clean[:, pos]
                return act

            out[layer, pos] = metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, hook)])).mean()
    return out


def timed(fn, repeats: int) -> tuple[float, object]:
    samples, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1 repeat, no batch-size sweep")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats

    model = gpt2_small_lens()
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 50257, (1, N_POS), generator=gen)
    corrupted = clean.clone()
    corrupted[:, [3, 8, 15]] = torch.randint(0, 50257, (1, 3), generator=gen)
    _, clean_cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_resid_pre"))

    def batched(**kw):
        return lambda: patching.get_act_patch_resid_pre(model, corrupted, clean_cache, metric, **kw)

    batched()()  # warm up
    results: dict[str, object] = {"sites": model.cfg.n_layers * N_POS, "threads": torch.get_num_threads()}
    default_runs = max(1, patching.DEFAULT_TOKENS_PER_BATCH // N_POS)
    results["default_batch_size"] = default_runs
    t_lens, r_lens = timed(batched(), repeats)
    t_loop, r_loop = timed(lambda: per_site_loop(model, corrupted, clean_cache), max(1, repeats - 1))
    t_tok, r_tok = timed(batched(start_at_layer=False), repeats)
    results.update(
        loop_s=t_loop,
        lens_s=t_lens,
        lens_from_tokens_s=t_tok,
        speedup_vs_loop=t_loop / t_lens,
        speedup_from_tokens_vs_loop=t_loop / t_tok,
        max_abs_diff_vs_loop=(r_lens - r_loop).abs().max().item(),
        max_abs_diff_from_tokens=(r_tok - r_loop).abs().max().item(),
    )
    if not args.quick:
        results["sweep_s"] = {b: timed(batched(batch_size=b), 1)[0] for b in (8, 24, 48, 240)}
    if importlib.util.find_spec("transformer_lens") is not None:
        results["transformer_lens"] = bench_transformer_lens(model, clean, corrupted, repeats)
    else:
        results["transformer_lens"] = "not installed"
    print(json.dumps(results, indent=1))


def bench_transformer_lens(model, clean, corrupted, repeats: int) -> dict:  # pragma: no cover - optional
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens import patching as tl_patching

    cfg = HookedTransformerConfig(
        n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=1024, act_fn="gelu_new",
        normalization_type="LN",
    )  # fmt: skip
    tl = HookedTransformer(cfg).eval()
    _, cache = tl.run_with_cache(clean)

    def tl_metric(logits):
        return (logits[:, -1, ANSWER] - logits[:, -1, WRONG]).mean()

    t, _ = timed(lambda: tl_patching.get_act_patch_resid_pre(tl, corrupted, cache, tl_metric), max(1, repeats - 1))
    return {"tl_s": t}


if __name__ == "__main__":
    main()
