"""Greedy decoding speed of lens's ``generate`` against Hugging Face's (and TransformerLens when installed).

GPT-2-small shape (12 layers, d_model 768, 12 heads, vocab 50257), random weights, fp32 CPU, a 32-token
prompt and 128 greedy tokens (no EOS stop), at batch 1 and batch 8. Reports tokens/s, the ratio to HF
measured in the same run (calls interleaved so background load hits all contenders alike), and the
fraction of the memory-bandwidth limit reached: decoding reads every weight once per step, so
``weight bytes per step x steps/s / read bandwidth``, the read bandwidth being measured by timing ``sum``
over a 1 GiB tensor (beyond the last-level cache) interleaved with the generate calls. The fraction is
given on wall time and on process CPU time (robust to time-slicing on a shared machine); the prompt's
prefill is included in the generate time, so both slightly understate the decode loop's own fraction.
Also checks that lens and HF emit the same tokens, and measures the int8 KV cache (memory, and the max
logit difference vs the fp32 cache with both teacher-forced on the same tokens), and the one-off cost of
the input-major copy of GPT-2's tied unembedding that long CPU calls decode with (``decode_copy``: its
build, its per-call check, and a first call's tokens/s with the build included; the timed calls reuse it).

Run: ``.venv/bin/python -m benchmarks.bench_generate [--quick] [--threads N] [--repeats N]``
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


def read_kernel(gib: float = 1.0) -> tuple[Callable[[], object], int]:
    """(a function streaming ``gib`` GiB through ``sum``, its byte count): the read-bandwidth probe.

    The tensor is larger than the last-level cache, so this measures memory, not cache, bandwidth. It is
    timed interleaved with the generate calls, so background load depresses both alike.
    """
    x = torch.ones(int(gib * 2**30) // 4)
    return x.sum, x.numel() * 4


def weight_bytes_per_step(model) -> int:
    """Bytes of weights one decode step reads: every block and final-norm weight, and the unembedding."""
    params = [p for n, p in model.named_parameters() if n.startswith(("blocks.", "ln_final."))]
    params.append(model.unembed.weight)
    return sum(p.numel() * p.element_size() for p in params)


def weight_floor(model, batch: int, steps: int) -> Callable[[], None]:
    """``steps`` decode steps of nothing but the weight products, in lens's own layouts and kernels.

    Every decoder must at least stream each projection weight and the unembedding once per step, so this
    is the floor of any implementation's step time on this machine (attention over the short KV cache,
    norms, activations and framework overhead come on top). ``hf_time / floor_time`` is then the
    largest speed-up over HF that any decoder could reach here.
    """
    from lens.components.linear import linear
    from lens.generation import decode_unembed

    pairs = []
    for block in model.blocks:
        for mod, names in ((block.attn, ("qkv", "o")), (getattr(block, "mlp", None), ("gate", "in", "out"))):
            for n in names:
                w = getattr(mod, f"{n}_weight", None) if mod is not None else None
                if w is not None:
                    pairs.append((w, getattr(mod, f"{n}_bias")))
    w_u = decode_unembed.weight_for_decode(model, batch * steps)  # the layout generate decodes with
    pairs.append((w_u.t(), model.unembed.bias))
    xs = {w.shape[1]: torch.randn(batch, w.shape[1], dtype=w.dtype) for w, _ in pairs}

    def run() -> None:
        with torch.inference_mode():
            for _ in range(steps):
                for w, b in pairs:
                    linear(xs[w.shape[1]], w, b)

    return run


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def interleaved(
    fns: dict[str, Callable[[], object]], repeats: int
) -> tuple[dict[str, float], dict[str, float], dict[str, object]]:
    """(median wall s, median CPU s, warm-up outputs) per contender, calls alternating between them.

    Wall time is what a user waits; CPU time (all threads) is robust to time-slicing on a shared machine.
    """
    outputs = {name: fn() for name, fn in fns.items()}
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w, c = _timed(fn)
            wall[name].append(w)
            cpu[name].append(c)
    med = statistics.median
    return {k: med(v) for k, v in wall.items()}, {k: med(v) for k, v in cpu.items()}, outputs


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
    for batch in (1, 8):
        p = torch.randint(0, 50256, (batch, PROMPT), generator=g)
        fns = {
            "hf": lambda p=p: hf_generate(hf, p, new),
            "tl": lambda p=p: tl.generate(
                p, max_new_tokens=new, stop_at_eos=False, do_sample=False, use_past_kv_cache=True, verbose=False
            ),
        }
        wall, _, _ = interleaved(fns, repeats if batch == 1 else max(1, repeats - 1))
        out[f"batch{batch}"] = {"tl_tokens_per_s": batch * new / wall["tl"], "tl_vs_hf": wall["hf"] / wall["tl"]}
    return out


def hf_generate(hf, p: torch.Tensor, new: int) -> torch.Tensor:
    with torch.no_grad():
        return hf.generate(
            p, attention_mask=torch.ones_like(p), max_new_tokens=new, do_sample=False, eos_token_id=None,
            pad_token_id=0,
        )  # fmt: skip


@torch.inference_mode()
def int8_cache_report(model, prompt: torch.Tensor, new: int) -> dict:
    """Max |logit difference| of the int8 cache vs the fp32 cache over ``new`` teacher-forced steps."""
    from lens.generation import KVCache

    tokens = model.generate(prompt, new, stop_at_eos=False)
    logits = {}
    for dtype in (None, "int8"):
        cache = KVCache.for_model(model, tokens.shape[0], tokens.shape[1], kv_cache_dtype=dtype)
        steps = [model(tokens[:, : prompt.shape[1]], past_kv_cache=cache)[:, -1]]
        for t in range(prompt.shape[1], tokens.shape[1] - 1):
            steps.append(model(tokens[:, t : t + 1], past_kv_cache=cache)[:, -1])
        logits[dtype] = torch.stack(steps, 1)
        logits[f"{dtype}_bytes"] = cache.nbytes
    diff = (logits["int8"] - logits[None]).abs()
    agree = (logits["int8"].argmax(-1) == logits[None].argmax(-1)).float().mean().item()
    return {
        "max_logit_diff": diff.max().item(),
        "mean_logit_diff": diff.mean().item(),
        "logit_scale": logits[None].abs().max().item(),
        "argmax_agreement": agree,
        "memory_ratio": logits["int8_bytes"] / logits["None_bytes"],
    }


def decode_copy_report(model, prompt: torch.Tensor, new: int) -> dict:
    """What the input-major copy of the tied unembedding costs: building it once, checking it per call.

    Also times one ``generate`` call on a model that holds no copy yet (the first long call pays the build).
    """
    from lens.generation import decode_unembed

    rows = prompt.shape[0] * new
    decode_unembed.release(model)
    with torch.inference_mode():
        t = time.perf_counter()
        copy = decode_unembed.weight_for_decode(model, rows)
        build = time.perf_counter() - t
        checks = []
        for _ in range(3):
            t = time.perf_counter()
            decode_unembed.weight_for_decode(model, rows)
            checks.append(time.perf_counter() - t)
    nbytes = copy.nbytes
    del copy
    decode_unembed.release(model)
    t = time.perf_counter()
    model.generate(prompt, new, stop_at_eos=False)
    first = time.perf_counter() - t
    return {
        "copy_MB": nbytes / 1e6,
        "build_ms": build * 1e3,
        "check_ms_per_call": statistics.median(checks) * 1e3,
        "first_call_tokens_per_s": prompt.shape[0] * new / first,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="32 new tokens, one timed repeat")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per contender (batch 8: one fewer)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--tl-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    new, repeats = (32, 1) if args.quick else (NEW, args.repeats)
    if args.tl_worker:
        print(json.dumps(tl_worker(new, repeats)))
        return

    from benchmarks._common import run_subprocess
    from benchmarks.bench_forward import tl_python
    from lens.adapters import from_hf_model

    hf = gpt2_small()
    model = from_hf_model(hf).eval()
    g = torch.Generator().manual_seed(0)
    prompts = {
        1: torch.randint(0, 50257, (1, PROMPT), generator=g),
        8: torch.randint(0, 50257, (8, PROMPT), generator=g),
    }

    report: dict = {"threads": torch.get_num_threads(), "prompt": PROMPT, "new_tokens": new}
    read, read_bytes = read_kernel()
    step_bytes = weight_bytes_per_step(model)
    report["weight_bytes_per_step_MB"] = step_bytes / 1e6
    report["decode_copy"] = decode_copy_report(model, prompts[1], new)
    for batch, p in prompts.items():
        fns = {
            "lens": lambda p=p: model.generate(p, new, stop_at_eos=False),
            "hf": lambda p=p: hf_generate(hf, p, new),
            "read": read,
            "floor": weight_floor(model, batch, new),
        }
        wall, cpu, outputs = interleaved(fns, repeats if batch == 1 else max(1, repeats - 1))
        bw_wall, bw_cpu = read_bytes / wall.pop("read"), read_bytes / cpu.pop("read")
        floor, _ = wall.pop("floor"), cpu.pop("floor")
        row = {
            "weight_floor_ms_per_step": floor / new * 1e3,
            "ceiling_vs_hf": wall["hf"] / floor,
            "lens_over_floor": wall["lens"] / floor,
            "same_tokens_as_hf": torch.equal(outputs["lens"], outputs["hf"]),
            "read_bandwidth_GBps": {"wall": bw_wall / 1e9, "cpu": bw_cpu / 1e9},
        }
        for name, sec in wall.items():
            row[name] = {
                "tokens_per_s": batch * new / sec,
                "vs_hf": wall["hf"] / sec,
                "bandwidth_fraction": step_bytes * new / sec / bw_wall,
                "bandwidth_fraction_cpu_time": step_bytes * new / cpu[name] / bw_cpu,
            }
        report[f"batch{batch}"] = row
    tl_py = tl_python()
    if tl_py is not None:  # TransformerLens pins other transformers versions: it runs in its own interpreter
        threads = ["--threads", str(args.threads)] if args.threads else []
        quick = ["--quick"] if args.quick else []
        tl = run_subprocess(
            "benchmarks.bench_generate", "--tl-worker", "--repeats", str(repeats), *threads, *quick, python=tl_py
        )
        for batch in prompts:
            r = tl[f"batch{batch}"]
            report[f"batch{batch}"]["transformer_lens"] = {
                "tokens_per_s": r["tl_tokens_per_s"], "vs_hf": r["tl_vs_hf"],
                "note": "own process, vs that interpreter's HF generate",
            }  # fmt: skip
    report["int8_cache"] = int8_cache_report(model, prompts[1], new)

    mb, threads = step_bytes / 1e6, report["threads"]
    print(
        f"GPT-2-small shape, fp32, {threads} thread(s), prompt {PROMPT}, {new} greedy tokens, "
        f"{mb:.0f} MB of weights/step"
    )
    print("| batch | implementation | tokens/s | vs HF | bandwidth fraction (wall) | (CPU time) |")
    print("|---|---|---|---|---|---|")
    for batch in prompts:
        for name, r in report[f"batch{batch}"].items():
            if name in ("lens", "hf", "transformer_lens"):
                tps, ratio = r["tokens_per_s"], r["vs_hf"]
                frac, frac_cpu = r.get("bandwidth_fraction"), r.get("bandwidth_fraction_cpu_time")
                fr = "-" if frac is None else f"{frac:.2f}"
                fc = "-" if frac_cpu is None else f"{frac_cpu:.2f}"
                print(f"| {batch} | {name} | {tps:.1f} | {ratio:.2f}x | {fr} | {fc} |")
    for batch in prompts:
        row = report[f"batch{batch}"]
        bw = row["read_bandwidth_GBps"]
        same = row["same_tokens_as_hf"]
        print(
            f"batch {batch}: read bandwidth {bw['wall']:.1f} GB/s wall, {bw['cpu']:.1f} GB/s per CPU-second; "
            f"same tokens as HF: {same}"
        )
        print(
            f"batch {batch}: weight products alone take {row['weight_floor_ms_per_step']:.1f} ms/step, so no "
            f"decoder can beat {row['ceiling_vs_hf']:.2f}x HF here; lens takes {row['lens_over_floor']:.2f}x "
            "that floor (prefill included)"
        )
    dc = report["decode_copy"]
    print(
        f"input-major copy of the tied unembedding: {dc['copy_MB']:.0f} MB, built once in {dc['build_ms']:.0f} ms, "
        f"checked in {dc['check_ms_per_call']:.1f} ms per call; a first batch-1 call (build included): "
        f"{dc['first_call_tokens_per_s']:.1f} tokens/s"
    )
    q = report["int8_cache"]
    print(
        f"int8 KV cache: {q['memory_ratio']:.3f}x fp32 memory; max |logit diff| {q['max_logit_diff']:.4f} "
        f"(mean {q['mean_logit_diff']:.5f}, logits up to {q['logit_scale']:.1f}), "
        f"argmax agreement {q['argmax_agreement']:.3f}"
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
