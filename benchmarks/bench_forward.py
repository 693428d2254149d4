"""Forward-pass speed and memory of lens against Hugging Face (and TransformerLens when installed).

1. GPT-2-small shape (12 layers, d_model 768, vocab 50257), random weights, fp32 CPU, batch 8 x 128:
   lens forward time / HF forward time (target <= 1.0), and ``run_with_cache`` with every hook /
   lens's plain forward (target <= 1.15); medians of interleaved calls (10, ``--quick``: 3).
2. Mistral-shaped narrow model (8 layers, d_model 256, 8 heads, 2 kv heads, window 4096, vocab
   1000), one sequence of 8192 tokens, no pattern hooks: time and peak memory / HF's (sdpa),
   target <= 1.2 for both. Each contender's peak is measured in its own fresh process.

``--baseline REF`` (e.g. ``bf4e6f3``) also measures part 1 for lens at git revision REF in the same run:
REF is checked out with ``git worktree`` into a temporary directory (removed afterwards) and runs in a
worker subprocess that imports that ``lens`` and this checkout's benchmark code, on the same seeded HF
weights converted by its own ``from_hf_model``. The two processes take turns, one pass over all
contenders each, so background load hits both alike; each times HF too, so every ratio is within one
process, and current/baseline is reported for lens's forward time and for both ratios.

Run (from the repository root)::

    .venv/bin/python -m benchmarks.bench_forward [--quick] [--skip-long] [--threads N]
    .venv/bin/python -m benchmarks.bench_forward --skip-long --baseline bf4e6f3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from benchmarks._common import (
    fmt_bytes,
    gpt2_small,
    interleaved_times,
    peak_bytes_since,
    reset_peak,
    run_subprocess,
    tl_gpt2_small,
)


def mistral_narrow(seq: int):
    import transformers

    torch.manual_seed(0)
    cfg = transformers.MistralConfig(
        num_hidden_layers=8,
        hidden_size=256,
        num_attention_heads=8,
        num_key_value_heads=2,
        intermediate_size=1024,
        vocab_size=1000,
        sliding_window=4096,
        max_position_embeddings=max(seq, 32768),
        attn_implementation="sdpa",
    )
    return transformers.MistralForCausalLM(cfg).eval()


def tl_python() -> str | None:
    """An interpreter with TransformerLens: this one, $LENS_TL_PYTHON, or .venv-tl/bin/python."""
    import importlib.util
    import os
    from pathlib import Path

    if importlib.util.find_spec("transformer_lens") is not None:
        return sys.executable
    for cand in (os.environ.get("LENS_TL_PYTHON"), str(Path(__file__).parent.parent / ".venv-tl/bin/python")):
        if cand and Path(cand).exists():
            return cand
    return None


def tl_gpt2_worker(repeats: int) -> dict:
    """TransformerLens vs HF on the GPT-2-small shape, both timed in this (TransformerLens) process."""
    hf, tl = gpt2_small(), tl_gpt2_small()
    tokens = torch.randint(0, 50257, (8, 128), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        times = interleaved_times({"hf": lambda: hf(tokens), "tl": lambda: tl(tokens)}, repeats=repeats)
    return {"hf_s": times["hf"], "tl_s": times["tl"], "tl_over_hf": times["tl"] / times["hf"]}


def tl_long_worker(seq: int, repeats: int) -> dict:
    """TransformerLens on the Mistral-shaped narrow model: time and peak memory of one forward."""
    from transformer_lens import HookedTransformer as TLModel
    from transformer_lens import HookedTransformerConfig

    torch.manual_seed(0)
    base = reset_peak()
    cfg = HookedTransformerConfig(
        n_layers=8, d_model=256, d_head=32, n_heads=8, n_key_value_heads=2, d_mlp=1024, d_vocab=1000,
        n_ctx=seq, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=32,
        gated_mlp=True, window_size=4096, attn_types=["local"] * 8, device="cpu",
    )  # fmt: skip
    tl = TLModel(cfg).eval()
    build_peak = peak_bytes_since(base)
    tokens = torch.randint(0, 1000, (1, seq), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        import gc

        gc.collect()
        base = reset_peak()
        tl(tokens)
        peak = peak_bytes_since(base)
        times = interleaved_times({"tl": lambda: tl(tokens)}, repeats=repeats, warmup=0)
    return {"impl": "tl", "time_s": times["tl"], "peak_bytes": peak, "model_build_peak_bytes": build_peak}


class ForwardSide:
    """One process's GPT-2-small contenders: HF forward, lens forward, and lens ``run_with_cache``.

    The parent holds one for the current code; a ``--baseline`` worker holds one for the baseline's lens.
    """

    NAMES = ("hf", "lens", "lens_cache_all", "lens_cache_no_reuse")

    def __init__(self) -> None:
        from benchmarks._common import from_hf_model

        torch.set_grad_enabled(False)
        self.hf = gpt2_small()
        self.model = from_hf_model(self.hf)
        self.tokens = torch.randint(0, 50257, (8, 128), generator=torch.Generator().manual_seed(0))
        t, model = self.tokens, self.model
        self.fns = {
            "hf": lambda: self.hf(t),
            "lens": lambda: model(t),
            "lens_cache_all": lambda: model.run_with_cache(t),
            "lens_cache_no_reuse": lambda: model.run_with_cache(t, reuse_memory=False),
        }

    def warmup(self) -> dict:
        """One untimed call each; returns lens's max |logit difference| from HF."""
        with torch.inference_mode():
            for fn in self.fns.values():
                fn()
            return {"max_abs_logit_diff": (self.model(self.tokens) - self.hf(self.tokens).logits).abs().max().item()}

    def round(self, index: int = 0, repeats: int = 1) -> dict:
        """``repeats`` interleaved passes over the contenders: ``{name: [seconds, ...]}``."""
        k = index % len(self.NAMES)
        order = self.NAMES[k:] + self.NAMES[:k]
        out: dict = {n: [] for n in self.NAMES}
        with torch.inference_mode():
            for _ in range(repeats):
                for name in order:
                    t0 = time.perf_counter()
                    self.fns[name]()
                    out[name].append(time.perf_counter() - t0)
        return out


def _summary(times: dict[str, float]) -> dict:
    return {
        "hf_s": times["hf"],
        "lens_s": times["lens"],
        "lens_cache_all_s": times["lens_cache_all"],
        "lens_over_hf": times["lens"] / times["hf"],
        "cache_over_plain": times["lens_cache_all"] / times["lens"],
        "lens_cache_no_reuse_s": times["lens_cache_no_reuse"],
        "cache_no_reuse_over_plain": times["lens_cache_no_reuse"] / times["lens"],
    }


def bench_gpt2(repeats: int, baseline: str | None = None) -> dict:
    """Medians over ``repeats`` interleaved calls; with ``baseline``, the same for lens at that revision.

    With a baseline the two processes take turns, a pass over all contenders each, so background load
    hits both sides alike; every ratio is taken within one process.
    """
    import contextlib

    from benchmarks._common import SideWorker, baseline_checkout

    with contextlib.ExitStack() as stack:
        base = None
        if baseline:
            tree, run_dir, commit = stack.enter_context(baseline_checkout(baseline))
            base = SideWorker("benchmarks.bench_forward", tree, run_dir, "--threads", str(torch.get_num_threads()))
            stack.callback(base.close)
        cur = ForwardSide()
        res = {"current": {"warm": cur.warmup(), "samples": {n: [] for n in ForwardSide.NAMES}}}
        if base is not None:
            res["baseline"] = {"warm": base.call("warmup"), "samples": {n: [] for n in ForwardSide.NAMES}}
        for i in range(repeats):
            sides = list(res) if i % 2 == 0 else list(res)[::-1]
            for side in sides:
                r = cur.round(i) if side == "current" else base.call("round", index=i)
                for n, v in r.items():
                    res[side]["samples"][n].extend(v)
    out = {}
    for side, r in res.items():
        times = {n: statistics.median(v) for n, v in r["samples"].items()}
        out[side] = {"max_abs_logit_diff": r["warm"]["max_abs_logit_diff"], **_summary(times)}
    g = out.pop("current")
    if "baseline" in out:
        b = out["baseline"]
        b.update(ref=baseline, commit=commit)
        g["baseline"] = b
        g["current_over_baseline"] = {
            "lens_forward_time": g["lens_s"] / b["lens_s"],
            "lens_over_hf": g["lens_over_hf"] / b["lens_over_hf"],
            "cache_over_plain": g["cache_over_plain"] / b["cache_over_plain"],
            "hf_time": g["hf_s"] / b["hf_s"],
        }
    return g


def long_context_worker(impl: str, seq: int, repeats: int) -> dict:
    """One contender in a fresh process: time and peak memory of a forward over ``seq`` tokens."""
    torch.manual_seed(0)
    hf = mistral_narrow(seq)
    if impl == "lens":
        from benchmarks._common import from_hf_model

        model = from_hf_model(hf, n_ctx=seq)
        del hf
        fn = lambda t: model(t)  # noqa: E731
    else:
        model = hf
        fn = lambda t: model(t, use_cache=False).logits  # noqa: E731
    tokens = torch.randint(0, 1000, (1, seq), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = fn(tokens)
        checksum = out[0, -1, :8].tolist()
        del out
        import gc

        gc.collect()
        base = reset_peak()
        out = fn(tokens)
        peak = peak_bytes_since(base)
        del out
        times = interleaved_times({impl: lambda: fn(tokens)}, repeats=repeats, warmup=0)
    return {"impl": impl, "time_s": times[impl], "peak_bytes": peak, "checksum": checksum}


def bench_long_context(seq: int, repeats: int) -> dict:
    res = {
        impl: run_subprocess("benchmarks.bench_forward", "--worker", impl, "--seq", str(seq), "--repeats", str(repeats))
        for impl in ("hf", "lens", "hf", "lens")
    }
    # two rounds each (the dict keeps the last); a second run smooths out start-up effects
    lens, hf = res["lens"], res["hf"]
    diff = max(abs(a - b) for a, b in zip(lens["checksum"], hf["checksum"]))
    return {
        "seq": seq,
        "hf_s": hf["time_s"],
        "lens_s": lens["time_s"],
        "time_ratio": lens["time_s"] / hf["time_s"],
        "hf_peak": hf["peak_bytes"],
        "lens_peak": lens["peak_bytes"],
        "memory_ratio": lens["peak_bytes"] / hf["peak_bytes"],
        "last_logits_max_diff": diff,
    }


def print_baseline(g: dict) -> None:
    b, x = g["baseline"], g["current_over_baseline"]
    print(f"Current code vs lens at {b['ref']} ({b['commit'][:10]}), same run; each side times HF in its own process")
    print("| side | HF forward ms | lens forward ms | forward lens/HF | run_with_cache ms | run_with_cache/forward |")
    print("|---|---|---|---|---|---|")
    for side, r in (("current", g), ("baseline", b)):
        print(
            f"| {side} | {r['hf_s'] * 1e3:.1f} | {r['lens_s'] * 1e3:.1f} | {r['lens_over_hf']:.3f} "
            f"| {r['lens_cache_all_s'] * 1e3:.1f} | {r['cache_over_plain']:.3f} |"
        )
    print(
        f"| current/baseline | {x['hf_time']:.3f} | {x['lens_forward_time']:.3f} | {x['lens_over_hf']:.3f} "
        f"| - | {x['cache_over_plain']:.3f} |"
    )
    print(
        f"  baseline max |logit diff| vs HF: {b['max_abs_logit_diff']:.2e}; "
        f"run_with_cache(reuse_memory=False)/forward: current {g['cache_no_reuse_over_plain']:.3f}, "
        f"baseline {b['cache_no_reuse_over_plain']:.3f}"
    )
    print(
        f"  targets: forward lens/HF <= 1.0: {g['lens_over_hf']:.3f}; "
        f"run_with_cache/forward <= 1.15: {g['cache_over_plain']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, shorter sequence (smoke test)")
    parser.add_argument(
        "--keep-freed-memory", action="store_true", help="call lens.utils.keep_freed_memory() first (opt-in tuning)"
    )
    parser.add_argument("--skip-long", action="store_true", help="skip the long-context Mistral-shaped part")
    parser.add_argument("--skip-families", action="store_true", help="skip the Gemma-2- and Mixtral-shaped rows")
    parser.add_argument(
        "--baseline", metavar="REF", default=None, help="also measure lens at git revision REF (GPT-2 part)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--worker", choices=["hf", "lens", "tl", "tl-gpt2"], help=argparse.SUPPRESS)
    parser.add_argument("--side-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.side_worker:
        from benchmarks._common import serve_side

        serve_side(ForwardSide)
        return
    if args.worker == "tl-gpt2":
        print(json.dumps(tl_gpt2_worker(args.repeats)))
        return
    if args.worker == "tl":
        print(json.dumps(tl_long_worker(args.seq, args.repeats)))
        return
    if args.worker:
        print(json.dumps(long_context_worker(args.worker, args.seq, args.repeats)))
        return

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}", file=sys.stderr)
    if args.keep_freed_memory:
        import lens

        print(f"lens.utils.keep_freed_memory(): {lens.utils.keep_freed_memory()} (applies to every contender)")
    g = bench_gpt2(repeats=3 if args.quick else 10, baseline=args.baseline)
    print(f"GPT-2-small shape, fp32 CPU, batch 8 x 128, {torch.get_num_threads()} thread(s)")
    print(f"  HF forward           {g['hf_s'] * 1e3:8.1f} ms")
    print(f"  lens forward         {g['lens_s'] * 1e3:8.1f} ms   lens/HF = {g['lens_over_hf']:.3f}  (target <= 1.0)")
    print(
        f"  lens run_with_cache  {g['lens_cache_all_s'] * 1e3:8.1f} ms   "
        f"cache/plain = {g['cache_over_plain']:.3f}  (target <= 1.15)"
    )
    print(
        f"  ... reuse_memory=False {g['lens_cache_no_reuse_s'] * 1e3:6.1f} ms   "
        f"cache/plain = {g['cache_no_reuse_over_plain']:.3f}  (fresh memory every call, as TransformerLens)"
    )
    print(f"  max |logit diff| vs HF: {g['max_abs_logit_diff']:.2e}")
    if args.baseline:
        print_baseline(g)
    fam = []
    if not args.skip_families:
        from benchmarks import bench_families

        batch, fseq, frepeats = (1, 128, 2) if args.quick else (4, 512, 5)
        print(f"#13 family shapes (benchmarks/bench_families.py), fp32 CPU, batch {batch} x {fseq}")
        for name in ("gemma2", "mixtral"):
            fam.append(bench_families.bench(name, batch, fseq, frepeats))
            bench_families.print_row(fam[-1])
    if args.skip_long:
        print(json.dumps({"gpt2": g, "families": fam}))
        return
    seq = 2048 if args.quick else args.seq
    m = bench_long_context(seq, repeats=1 if args.quick else args.repeats)
    print(f"Mistral-shaped narrow model (8 layers, d_model 256, GQA 8/2, window 4096), 1 x {seq} tokens")
    print(f"  HF (sdpa)  {m['hf_s'] * 1e3:8.0f} ms   peak +{fmt_bytes(m['hf_peak'])}")
    print(f"  lens       {m['lens_s'] * 1e3:8.0f} ms   peak +{fmt_bytes(m['lens_peak'])}")
    print(f"  time lens/HF = {m['time_ratio']:.3f}, memory lens/HF = {m['memory_ratio']:.3f}  (targets <= 1.2)")
    print(f"  max |last-position logit diff| vs HF: {m['last_logits_max_diff']:.2e}")
    tl = {}
    tl_py = tl_python()
    if tl_py is None:
        print("TransformerLens: not installed (not measured; set LENS_TL_PYTHON or create .venv-tl)")
    else:
        tl["gpt2"] = run_subprocess("benchmarks.bench_forward", "--worker", "tl-gpt2", "--repeats",
                                    str(3 if args.quick else 10), python=tl_py)  # fmt: skip
        print(f"TransformerLens 2.x ({tl_py}): GPT-2-small forward TL/HF = {tl['gpt2']['tl_over_hf']:.2f}")
        tl["long"] = run_subprocess("benchmarks.bench_forward", "--worker", "tl", "--seq", str(seq), "--repeats", "1",
                                    python=tl_py)  # fmt: skip
        print(
            f"TransformerLens long context: {tl['long']['time_s'] * 1e3:.0f} ms "
            f"(TL/HF = {tl['long']['time_s'] / m['hf_s']:.2f}), peak +{fmt_bytes(tl['long']['peak_bytes'])} "
            f"(TL/HF = {tl['long']['peak_bytes'] / m['hf_peak']:.1f}); building the model took "
            f"+{fmt_bytes(tl['long']['model_build_peak_bytes'])}"
        )
    print(json.dumps({"gpt2": g, "long_context": m, "transformer_lens": tl, "families": fam}))


if __name__ == "__main__":
    main()
