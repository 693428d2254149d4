"""Greedy decoding speed of lens's ``generate`` against Hugging Face's (and TransformerLens when installed).

GPT-2-small shape (12 layers, d_model 768, 12 heads, vocab 50257), random weights (seed 0), fp32 CPU, a
32-token prompt and 128 greedy tokens (no EOS stop), at batch 1 and batch 8. Reports tokens/s and the
ratio to HF ``generate`` measured in the same process, calls alternating round-robin so background load
hits every contender alike (medians over ``--rounds`` rounds; one untimed warm-up first).

Also reported, for the current code only:

- the fraction of the memory-bandwidth limit reached: decoding reads every weight once per step, so
  ``weight bytes per step x steps/s / read bandwidth``, the read bandwidth timed as ``sum`` over a 1 GiB
  tensor (beyond the last-level cache) in the same rounds; on wall time and on process CPU time (robust
  to time-slicing on a shared machine). The prefill is included in the generate time, so both slightly
  understate the decode loop's own fraction;
- the weight floor: per decode step, one product with every block weight matrix and the unembedding,
  taken from the model's parameters as plain tensors in their stored layout, and nothing else. No
  decoder that streams those weights can be faster on this machine, so ``HF time / floor`` bounds the
  speed-up over HF;
- that lens and HF emit the same tokens, and the int8 and int4 KV caches' memory and max logit difference
  vs the fp32 cache (teacher-forced on the same tokens; :mod:`benchmarks.bench_kv_cache`);
- speculative decoding (prompt lookup, draft models) on a code-continuation workload against lens's own
  plain greedy decoding: speed-up, identical tokens, acceptance, bandwidth fraction
  (:mod:`benchmarks._speculative`).

``--baseline REF`` also measures lens at git revision REF (e.g. ``bf4e6f3``) in the same run: REF is
checked out with ``git worktree`` into a temporary directory (removed afterwards) and runs in a worker
subprocess that imports that ``lens`` and this checkout's benchmark code. The worker builds the same
seeded HF model and converts it with its own ``from_hf_model``. The parent and the worker take turns,
a round each, so background load hits both alike, and each times HF as well, so every lens/HF ratio
is measured within one process. The report gives both sides' tokens/s and lens/HF, and
current/baseline, both as raw tokens/s and as the ratio of the two lens/HF ratios. The baseline's
tokens must equal the current code's.

Run (from the repository root)::

    .venv/bin/python -m benchmarks.bench_generate                       # current code vs HF
    .venv/bin/python -m benchmarks.bench_generate --baseline bf4e6f3    # ... and vs lens at bf4e6f3
    .venv/bin/python -m benchmarks.bench_generate --quick --baseline bf4e6f3   # smoke test
    .venv/bin/python -m benchmarks.bench_generate --speculative-only           # just speculative decoding

Options: ``--rounds N`` (default 5), ``--new-tokens N`` (default 128), ``--threads N`` (default: torch's
choice; the baseline worker uses the same), ``--quick`` (16 tokens, one round; numbers not meaningful),
``--no-speculative`` / ``--speculative-only`` (skip / run only the speculative workloads).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import types
from collections.abc import Callable

import torch

from benchmarks._common import gpt2_small, tl_gpt2_small

PROMPT, NEW = 32, 128
BATCHES = (1, 8)
CONTENDERS = ("lens", "hf")


def make_prompts() -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {b: torch.randint(0, 50257, (b, PROMPT), generator=g) for b in BATCHES}


def read_kernel(gib: float = 1.0) -> tuple[Callable[[], object], int]:
    """(a function streaming ``gib`` GiB through ``sum``, its byte count): the read-bandwidth probe.

    The tensor is larger than the last-level cache, so this measures memory, not cache, bandwidth.
    """
    x = torch.ones(int(gib * 2**30) // 4)
    return x.sum, x.numel() * 4


def weight_bytes_per_step(model) -> int:
    """Bytes of weights one decode step reads: every block and final-norm weight, and the unembedding."""
    params = [p for n, p in model.named_parameters() if n.startswith(("blocks.", "ln_final."))]
    params.append(model.unembed.weight)
    return sum(p.numel() * p.element_size() for p in params)


def weight_floor(model, batch: int, steps: int) -> Callable[[], None]:
    """``steps`` decode steps of nothing but the weight products, from the model's parameters as plain tensors.

    One ``addmm`` per block weight matrix (lens's ``[out, in]`` parameters, read in their stored layout) and
    one product with the unembedding per step. Every decoder must at least stream each of these once per
    step, so this is the floor of any implementation's step time here (attention over the short KV cache,
    norms, activations and framework overhead come on top).
    """
    params = dict(model.named_parameters())
    pairs: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    for name, w in params.items():
        if name.startswith("blocks.") and w.ndim == 2:
            bias = params.get(name.removesuffix("weight") + "bias") if name.endswith("weight") else None
            pairs.append((w.detach().t(), bias))  # x @ W.T: the product F.linear computes
    w_u = model.unembed.weight.detach()
    d_vocab = model.cfg.d_vocab
    pairs.append((w_u if w_u.shape[-1] == d_vocab else w_u.t(), getattr(model.unembed, "bias", None)))
    xs = {w.shape[0]: torch.randn(batch, w.shape[0], dtype=w.dtype) for w, _ in pairs}

    def run() -> None:
        with torch.inference_mode():
            for _ in range(steps):
                for w, b in pairs:
                    x = xs[w.shape[0]]
                    torch.matmul(x, w) if b is None else torch.addmm(b, x, w)

    return run


def _timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(wall seconds, process CPU seconds, result) of one call."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def interleaved(
    fns: dict[str, Callable[[], object]], repeats: int
) -> tuple[dict[str, float], dict[str, float], dict[str, object]]:
    """(median wall s, median CPU s, warm-up outputs) per contender, calls alternating between them."""
    outputs = {name: fn() for name, fn in fns.items()}
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w, c, _ = _timed(fn)
            wall[name].append(w)
            cpu[name].append(c)
    med = statistics.median
    return {k: med(v) for k, v in wall.items()}, {k: med(v) for k, v in cpu.items()}, outputs


def hf_generate(hf, p: torch.Tensor, new: int) -> torch.Tensor:
    with torch.no_grad():
        return hf.generate(
            p, attention_mask=torch.ones_like(p), max_new_tokens=new, do_sample=False, eos_token_id=None,
            pad_token_id=0,
        )  # fmt: skip


class GenerateSide:
    """One process's contenders: HF ``generate`` and this interpreter's lens ``generate``, both batches.

    The parent holds one for the current code; a ``--baseline`` worker holds one for the baseline's lens.
    Methods return plain JSON-able values, so the worker can send them back unchanged.
    """

    def __init__(self, new: int) -> None:
        from benchmarks._common import from_hf_model

        self.new = new
        self.hf = gpt2_small()
        self.model = from_hf_model(self.hf).eval()
        self.prompts = make_prompts()

    def fn(self, name: str, batch: int, new: int | None = None) -> Callable[[], torch.Tensor]:
        p, n = self.prompts[batch], new or self.new
        if name == "lens":
            return lambda: self.model.generate(p, n, stop_at_eos=False)
        return lambda: hf_generate(self.hf, p, n)

    def warmup(self) -> dict:
        """Untimed calls: full length at batch 1, short at batch 8. Returns the greedy tokens of each."""
        out = {}
        for batch in BATCHES:
            n = self.new if batch == 1 else min(self.new, 16)
            out[f"batch{batch}"] = {name: self.fn(name, batch, n)().tolist() for name in CONTENDERS}
        return out

    def round(self, index: int = 0) -> dict:
        """One timed call per contender and batch: ``{batchB: {name: [wall s, CPU s]}}``.

        The contenders' order rotates with ``index`` so neither always runs first.
        """
        order = CONTENDERS[index % 2 :] + CONTENDERS[: index % 2]
        res: dict = {}
        for batch in BATCHES:
            res[f"batch{batch}"] = {}
            for name in order:
                w, c, _ = _timed(self.fn(name, batch))
                res[f"batch{batch}"][name] = [w, c]
        return res


def tl_worker(new: int, repeats: int) -> dict:
    """In an interpreter with TransformerLens: its ``generate`` vs that interpreter's HF ``generate``."""
    hf, tl = gpt2_small(), tl_gpt2_small()
    # TL's generate insists on a tokenizer even for token input; the network is off, so a stand-in with the
    # attributes it reads (ids outside the prompts' range, so nothing counts as padding).
    tl.tokenizer = types.SimpleNamespace(
        eos_token_id=50256, pad_token_id=50256, bos_token_id=50256, padding_side="right"
    )
    g = torch.Generator().manual_seed(0)
    out = {"threads": torch.get_num_threads()}
    for batch in BATCHES:
        p = torch.randint(0, 50256, (batch, PROMPT), generator=g)
        fns = {
            "hf": lambda p=p: hf_generate(hf, p, new),
            "tl": lambda p=p: tl.generate(
                p, max_new_tokens=new, stop_at_eos=False, do_sample=False, use_past_kv_cache=True, verbose=False
            ),
        }
        wall, _, _ = interleaved(fns, repeats)
        out[f"batch{batch}"] = {"tl_tokens_per_s": batch * new / wall["tl"], "tl_vs_hf": wall["hf"] / wall["tl"]}
    return out


def quantized_cache_report(model, prompt: torch.Tensor, new: int) -> dict:
    """int8 and int4 KV caches vs fp32, teacher-forced on the greedy tokens (:mod:`benchmarks.bench_kv_cache`)."""
    from benchmarks.bench_kv_cache import on_greedy_continuation

    r = on_greedy_continuation(model, prompt, new)
    return {d: {**r[d], "logit_scale": r["logit_scale"]} for d in ("int8", "int4")}


def _medians(rounds: list[dict]) -> dict:
    """``{batchB: {name: (median wall, median CPU)}}`` over rounds."""
    med = statistics.median
    return {
        b: {name: (med(r[b][name][0] for r in rounds), med(r[b][name][1] for r in rounds)) for name in rounds[0][b]}
        for b in rounds[0]
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="smoke test: 16 new tokens, one round")
    ap.add_argument("--rounds", "--repeats", type=int, default=None, help="timed rounds (default 5; --quick: 1)")
    ap.add_argument("--new-tokens", type=int, default=NEW, help=f"greedy tokens per call (default {NEW})")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--baseline", metavar="REF", default=None, help="also measure lens at git revision REF")
    ap.add_argument("--no-speculative", action="store_true", help="skip the speculative decoding workloads")
    ap.add_argument("--speculative-only", action="store_true", help="run only the speculative decoding workloads")
    ap.add_argument("--tl-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--side-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    new, rounds = (16, args.rounds or 1) if args.quick else (args.new_tokens, args.rounds or 5)
    if args.tl_worker:
        print(json.dumps(tl_worker(new, rounds)))
        return
    if args.side_worker:
        from benchmarks._common import serve_side

        serve_side(lambda: GenerateSide(new))
        return

    from benchmarks._speculative import print_speculative, speculative_report

    if args.speculative_only:
        read, read_bytes = read_kernel()
        read()
        bw = read_bytes / statistics.median(_timed(read)[0] for _ in range(3))
        spec = speculative_report(rounds, args.quick, bw)
        print(f"read bandwidth {bw / 1e9:.1f} GB/s")
        print_speculative(spec)
        print(json.dumps({"threads": torch.get_num_threads(), "read_bandwidth_GBps": bw / 1e9, "speculative": spec}))
        return

    import contextlib

    from benchmarks._common import SideWorker, baseline_checkout, run_subprocess
    from benchmarks.bench_forward import tl_python

    threads = torch.get_num_threads()
    report: dict = {"threads": threads, "prompt": PROMPT, "new_tokens": new, "rounds": rounds}
    with contextlib.ExitStack() as stack:
        base = None
        if args.baseline:
            tree, run_dir, commit = stack.enter_context(baseline_checkout(args.baseline))
            report["baseline"] = {"ref": args.baseline, "commit": commit}
            worker_args = ["--new-tokens", str(new), "--threads", str(threads)]
            base = SideWorker("benchmarks.bench_generate", tree, run_dir, *worker_args)
            stack.callback(base.close)
        cur = GenerateSide(new)
        model = cur.model
        read, read_bytes = read_kernel()
        step_bytes = weight_bytes_per_step(model)
        report["weight_bytes_per_step_MB"] = step_bytes / 1e6
        floor_steps = min(new, 32)  # the floor's time per step hardly depends on the step count
        floors = {b: weight_floor(model, b, floor_steps) for b in BATCHES}

        tokens = {"current": cur.warmup()}
        if base is not None:
            tokens["baseline"] = base.call("warmup")
        for f in floors.values():
            f()
        read()

        cur_rounds, base_rounds, extra = [], [], {f"batch{b}": {"read": [], "floor": []} for b in BATCHES}
        for i in range(rounds):
            sides = ["current", "baseline"] if base is not None else ["current"]
            for side in sides if i % 2 == 0 else sides[::-1]:
                if side == "baseline":
                    base_rounds.append(base.call("round", index=i))
                    continue
                cur_rounds.append(cur.round(i))
                for b in BATCHES:
                    extra[f"batch{b}"]["read"].append(_timed(read)[:2])
                    extra[f"batch{b}"]["floor"].append(_timed(floors[b])[:2])
    report["quantized_cache"] = quantized_cache_report(model, cur.prompts[1], new)  # the worker is gone by now
    cur_med = _medians(cur_rounds)
    base_med = _medians(base_rounds) if base_rounds else None

    med = statistics.median
    for batch in BATCHES:
        key = f"batch{batch}"
        wall = {k: v[0] for k, v in cur_med[key].items()}
        cpu = {k: v[1] for k, v in cur_med[key].items()}
        reads, fl = extra[key]["read"], extra[key]["floor"]
        bw_wall, bw_cpu = read_bytes / med(w for w, _ in reads), read_bytes / med(c for _, c in reads)
        floor_step = med(w for w, _ in fl) / floor_steps
        warm = tokens["current"][key]
        row: dict = {
            "weight_floor_ms_per_step": floor_step * 1e3,
            "ceiling_vs_hf": wall["hf"] / (floor_step * new),
            "lens_over_floor": wall["lens"] / (floor_step * new),
            "same_tokens_as_hf": warm["lens"] == warm["hf"],
            "read_bandwidth_GBps": {"wall": bw_wall / 1e9, "cpu": bw_cpu / 1e9},
        }
        for name in CONTENDERS:
            row[name] = {
                "tokens_per_s": batch * new / wall[name],
                "vs_hf": wall["hf"] / wall[name],
                "bandwidth_fraction": step_bytes * new / wall[name] / bw_wall,
                "bandwidth_fraction_cpu_time": step_bytes * new / cpu[name] / bw_cpu,
            }
        if base_med is not None:
            bwall = {k: v[0] for k, v in base_med[key].items()}
            btok = tokens["baseline"][key]
            per_round = [(b[key]["lens"][0] / c[key]["lens"][0]) for c, b in zip(cur_rounds, base_rounds, strict=True)]
            row["baseline"] = {
                name: {"tokens_per_s": batch * new / bwall[name], "vs_hf": bwall["hf"] / bwall[name]}
                for name in CONTENDERS
            }
            row["current_over_baseline"] = {
                "tokens_per_s": bwall["lens"] / wall["lens"],
                "tokens_per_s_per_round": per_round,
                "vs_hf_ratio": (wall["hf"] / wall["lens"]) / (bwall["hf"] / bwall["lens"]),
                "hf_tokens_per_s": bwall["hf"] / wall["hf"],
            }
            row["baseline"]["same_tokens_as_current"] = btok["lens"] == warm["lens"]
            row["baseline"]["same_tokens_as_hf"] = btok["lens"] == btok["hf"]
        report[key] = row

    tl_py = tl_python()
    if tl_py is not None:  # TransformerLens pins other transformers versions: it runs in its own interpreter
        thr = ["--threads", str(args.threads)] if args.threads else []
        quick = ["--quick"] if args.quick else []
        tl = run_subprocess(
            "benchmarks.bench_generate", "--tl-worker", "--rounds", str(rounds), "--new-tokens", str(new),
            *thr, *quick, python=tl_py,
        )  # fmt: skip
        for batch in BATCHES:
            r = tl[f"batch{batch}"]
            report[f"batch{batch}"]["transformer_lens"] = {
                "tokens_per_s": r["tl_tokens_per_s"], "vs_hf": r["tl_vs_hf"],
                "note": "own process, vs that interpreter's HF generate",
            }  # fmt: skip

    if not args.no_speculative:
        bw = report["batch1"]["read_bandwidth_GBps"]["wall"] * 1e9
        report["speculative"] = speculative_report(rounds, args.quick, bw)
    print_report(report)
    if "speculative" in report:
        print_speculative(report["speculative"])
    print(json.dumps(report))


def print_report(report: dict) -> None:
    new, mb, threads = report["new_tokens"], report["weight_bytes_per_step_MB"], report["threads"]
    print(
        f"GPT-2-small shape, fp32, {threads} thread(s), prompt {PROMPT}, {new} greedy tokens, "
        f"{mb:.0f} MB of weights/step, median of {report['rounds']} round(s)"
    )
    print("| batch | implementation | tokens/s | vs HF | bandwidth fraction (wall) | (CPU time) |")
    print("|---|---|---|---|---|---|")
    for batch in BATCHES:
        for name, r in report[f"batch{batch}"].items():
            if name in ("lens", "hf", "transformer_lens"):
                frac, frac_cpu = r.get("bandwidth_fraction"), r.get("bandwidth_fraction_cpu_time")
                fr = "-" if frac is None else f"{frac:.2f}"
                fc = "-" if frac_cpu is None else f"{frac_cpu:.2f}"
                print(f"| {batch} | {name} | {r['tokens_per_s']:.1f} | {r['vs_hf']:.3f}x | {fr} | {fc} |")
    for batch in BATCHES:
        row = report[f"batch{batch}"]
        bw = row["read_bandwidth_GBps"]
        print(
            f"batch {batch}: read bandwidth {bw['wall']:.1f} GB/s wall, {bw['cpu']:.1f} GB/s per CPU-second; "
            f"same tokens as HF: {row['same_tokens_as_hf']}"
        )
        print(
            f"batch {batch}: weight products alone take {row['weight_floor_ms_per_step']:.1f} ms/step, so no "
            f"decoder can beat {row['ceiling_vs_hf']:.2f}x HF here; lens takes {row['lens_over_floor']:.2f}x "
            "that floor (prefill included)"
        )
    for dtype, q in report["quantized_cache"].items():
        print(
            f"{dtype} KV cache: {q['memory_ratio']:.3f}x fp32 memory; max |logit diff| {q['max_logit_diff']:.4f} "
            f"(mean {q['mean_logit_diff']:.5f}, logits up to {q['logit_scale']:.1f}), "
            f"argmax agreement {q['argmax_agreement']:.3f}"
        )
    if "baseline" not in report:
        print(f"target: batch 8 lens/HF >= 1.4: {report['batch8']['lens']['vs_hf']:.3f}")
        return
    ref, commit = report["baseline"]["ref"], report["baseline"]["commit"][:10]
    print()
    print(f"Current code vs lens at {ref} ({commit}), same run; each side times HF in its own process")
    print(
        "| batch | HF tok/s (current proc) | lens tok/s (current) | lens/HF (current) "
        "| HF tok/s (baseline proc) | lens tok/s (baseline) | lens/HF (baseline) "
        "| current/baseline tok/s | current/baseline lens/HF |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in BATCHES:
        row = report[f"batch{batch}"]
        b, x = row["baseline"], row["current_over_baseline"]
        print(
            f"| {batch} | {row['hf']['tokens_per_s']:.1f} | {row['lens']['tokens_per_s']:.1f} "
            f"| {row['lens']['vs_hf']:.3f}x | {b['hf']['tokens_per_s']:.1f} | {b['lens']['tokens_per_s']:.1f} "
            f"| {b['lens']['vs_hf']:.3f}x | {x['tokens_per_s']:.3f} | {x['vs_hf_ratio']:.3f} |"
        )
    for batch in BATCHES:
        row = report[f"batch{batch}"]
        b, x = row["baseline"], row["current_over_baseline"]
        rounds = ", ".join(f"{v:.3f}" for v in x["tokens_per_s_per_round"])
        print(
            f"batch {batch}: current/baseline lens tokens/s per round: {rounds}; HF in the two processes: "
            f"{x['hf_tokens_per_s']:.3f}; baseline tokens equal current's: {b['same_tokens_as_current']}, "
            f"HF's: {b['same_tokens_as_hf']}"
        )
    b1, b8 = report["batch1"], report["batch8"]
    x, b8_base = b1["current_over_baseline"], b8["baseline"]["lens"]["vs_hf"]
    print(
        f"targets: batch 1 current/baseline >= 0.95: {x['tokens_per_s']:.3f} in tokens/s, {x['vs_hf_ratio']:.3f} "
        f"in lens/HF; batch 8 lens/HF >= 1.4: {b8['lens']['vs_hf']:.3f} (baseline {b8_base:.3f})"
    )


if __name__ == "__main__":
    main()
