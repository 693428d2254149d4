"""Residual-stream activation patching over every (layer, position): batched lens vs a per-site loop.

GPT-2-small shape (12 layers, d_model 768, 12 heads, vocab 50257), random weights, fp32 CPU, one
prompt of 20 tokens (corrupted at 3 positions), metric = logit difference at the last position:
240 patch sites.

- ``loop``: one forward per site (``run_with_hooks`` from the tokens, a hook writing the clean value),
  as TransformerLens's ``get_act_patch_resid_pre`` does.
- ``lens``: ``lens.patching.get_act_patch_resid_pre`` at the default batch size (batched forwards
  starting at the patched layer). Target: >= 3x faster than ``loop``.
- ``lens_from_tokens``: the same batching with ``start_at_layer=False`` (batching alone).
- a batch-size sweep, and TransformerLens's ``patching.get_act_patch_resid_pre`` (same shape, its own
  random weights, under ``torch.no_grad``) when an interpreter with TransformerLens is found (this one,
  ``$LENS_TL_PYTHON`` or ``.venv-tl/bin/python``); it runs in that interpreter as a subprocess.

Run: ``.venv/bin/python -m benchmarks.bench_patching [--quick]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from benchmarks._common import run_subprocess, tl_gpt2_small
from benchmarks.bench_forward import tl_python

N_POS, ANSWER, WRONG = 20, 1000, 2000


def gpt2_small_lens():
    import lens

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
    ap.add_argument("--worker", choices=["tl"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats
    if args.worker == "tl":
        print(json.dumps(tl_worker(repeats)))
        return
    from lens import patching

    model = gpt2_small_lens()
    clean, corrupted = prompts()
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
        results["sweep_s"] = {b: timed(batched(batch_size=b), 1)[0] for b in (8, 24, 102, 240)}
    tl_py = tl_python()
    if tl_py is None:
        results["transformer_lens"] = "not installed (set LENS_TL_PYTHON or create .venv-tl)"
    else:
        tl = run_subprocess("benchmarks.bench_patching", "--worker", "tl", "--repeats", str(repeats), python=tl_py)
        results["transformer_lens"] = {**tl, "lens_speedup_vs_tl": tl["tl_s"] / t_lens}
    print(json.dumps(results, indent=1))


def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 50257, (1, N_POS), generator=gen)
    corrupted = clean.clone()
    corrupted[:, [3, 8, 15]] = torch.randint(0, 50257, (1, 3), generator=gen)
    return clean, corrupted


def tl_worker(repeats: int) -> dict:  # runs in an interpreter with TransformerLens
    import transformer_lens
    from transformer_lens import patching as tl_patching

    tl = tl_gpt2_small()
    clean, corrupted = prompts()
    _, cache = tl.run_with_cache(clean)

    def tl_metric(logits):
        return (logits[:, -1, ANSWER] - logits[:, -1, WRONG]).mean()

    with torch.no_grad():
        t, _ = timed(lambda: tl_patching.get_act_patch_resid_pre(tl, corrupted, cache, tl_metric), max(1, repeats - 1))
    return {"tl_s": t, "tl_version": getattr(transformer_lens, "__version__", "?"), "threads": torch.get_num_threads()}


if __name__ == "__main__":
    main()
