"""CPU + disk offload: peak resident memory and forward time of a model bigger than its ``max_memory`` budget.

Writes a random Llama-shaped fp32 checkpoint (``bench_loading``'s writer, ~500 MB: 8 blocks of ~45 MB, 131 MB
of embedding and unembedding), then in a fresh subprocess per case loads it and runs one forward of
``--batch x --pos`` tokens, measuring the rise of the resident high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs``) during the load and during the forward:

* ``lens in memory``: ``from_pretrained(dir)``;
* ``lens offload``: ``from_pretrained(dir, device_map="auto", max_memory={"cpu": budget}, offload_folder=...)``
  with ``budget`` = the root's modules plus ``--blocks-in-budget`` blocks, so the rest go to disk;
* ``HF offload`` (the peer, same budget): ``AutoModelForCausalLM.from_pretrained(..., device_map="auto",
  max_memory=..., offload_folder=...)``, and ``HF in memory``.

Printed per case: bytes placed in RAM, load peak / bytes placed (target <= 1.3), the forward's own rise,
the overall peak (load and forward, over the pre-load baseline) against the budget plus one block (target:
about 1), forward seconds (median of ``--repeats``) and the ratio to the
in-memory model; lens-offload logits must equal lens-in-memory logits exactly, and match HF's.

Run: ``.venv/bin/python -m benchmarks.bench_offload [--size-mb 500] [--blocks-in-budget 2] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import peak_bytes_since, reset_peak
from benchmarks.bench_loading import write_checkpoint

CASES = ("lens-memory", "lens-offload", "hf-memory", "hf-offload")


def _sizes(directory: Path) -> tuple[int, int]:
    """(bytes of the root's modules, bytes of one block) of the written checkpoint, from its header."""
    from safetensors import safe_open

    root = block = 0
    with safe_open(directory / "model.safetensors", "pt") as f:
        for name in f.keys():
            nbytes = f.get_slice(name).get_shape()
            n = 4
            for s in nbytes:
                n *= s
            if ".layers." not in name:
                root += n
            elif ".layers.0." in name:
                block += n
    return root, block


def measure(case: str, directory: str, budget: int, batch: int, pos: int, repeats: int, out: str) -> dict:
    """In this (fresh) process: load ``directory`` as ``case``, run the forward, report peaks and times."""
    import accelerate  # noqa: F401  (imports before the baseline)
    import transformers

    from lens import HookedTransformer

    torch.ones(1 << 22).sum()  # start torch's thread pool before the baseline
    folder = tempfile.mkdtemp(prefix="lens-offload-")
    placed = dict(device_map="auto", max_memory={"cpu": budget}, offload_folder=folder)
    toks = torch.randint(0, 16000, (batch, pos), generator=torch.Generator().manual_seed(0))
    try:
        base = start = reset_peak()
        t0 = time.perf_counter()
        if case.startswith("lens"):
            model = HookedTransformer.from_pretrained(
                directory, dtype="float32", **(placed if "offload" in case else {})
            )
        else:
            kw = placed if "offload" in case else {}
            model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **kw).eval()
        load_s = time.perf_counter() - t0
        load_peak = peak_bytes_since(base)
        resident = sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type != "meta")
        run = (lambda: model(toks)) if case.startswith("lens") else (lambda: model(toks).logits)
        times = []
        with torch.no_grad():
            base = reset_peak()
            logits = run()
            forward_peak = peak_bytes_since(base)
            overall = peak_bytes_since(start)  # the resident peak of the forward, over the pre-load baseline
            for _ in range(repeats):
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
        torch.save(logits[:, -4:].clone(), out)
        on_disk = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return dict(
        case=case, resident=resident, load_peak=load_peak, load_s=round(load_s, 2), forward_peak=forward_peak,
        overall_peak=overall, forward_s=statistics.median(times), offloaded_bytes=on_disk,
    )  # fmt: skip


def _run(case: str, directory: Path, budget: int, args, out: Path) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_offload", "--measure", case, "--dir", str(directory),
           "--budget", str(budget), "--batch", str(args.batch), "--pos", str(args.pos),
           "--repeats", str(args.repeats), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return dict(case=case, error=proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=500.0)
    parser.add_argument("--blocks-in-budget", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--pos", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.dir, args.budget, args.batch, args.pos, args.repeats, args.out)))
        return

    work = Path(tempfile.mkdtemp(prefix="lens-bench-offload-"))
    try:
        n_params = write_checkpoint(work, args.size_mb)
        root, block = _sizes(work)
        budget = int(root + args.blocks_in_budget * block)
        total = n_params * 4
        print(f"checkpoint: {total / 1e6:.0f} MB fp32 (root modules {root / 1e6:.0f} MB, one block "
              f"{block / 1e6:.1f} MB); max_memory cpu = {budget / 1e6:.0f} MB; "
              f"forward {args.batch}x{args.pos} tokens")  # fmt: skip
        results = {case: _run(case, work, budget, args, work / f"{case}.pt") for case in CASES}
        print(f"{'case':14s} {'in RAM':>8s} {'load peak':>10s} {'/placed':>8s} {'fwd peak':>9s} {'overall':>8s} "
              f"{'/(budget+block)':>15s} {'fwd s':>7s} {'vs memory':>9s} {'on disk':>8s}")  # fmt: skip
        for case, r in results.items():
            if "error" in r:
                print(f"{case:14s} failed: {r['error']}")
                continue
            memory = results[case.split("-")[0] + "-memory"]
            vs = r["forward_s"] / memory["forward_s"] if "forward_s" in memory else float("nan")
            fwd_ratio = r["overall_peak"] / (budget + block) if "offload" in case else float("nan")
            print(f"{case:14s} {r['resident'] / 1e6:7.0f}M {r['load_peak'] / 1e6:9.0f}M "
                  f"{r['load_peak'] / r['resident']:8.3f} {r['forward_peak'] / 1e6:8.0f}M "
                  f"{r['overall_peak'] / 1e6:7.0f}M {fwd_ratio:15.3f} "
                  f"{r['forward_s']:7.3f} {vs:8.2f}x {r['offloaded_bytes'] / 1e6:7.0f}M")  # fmt: skip
        if "error" not in results["lens-offload"] and "error" not in results["lens-memory"]:
            a, b = torch.load(work / "lens-offload.pt"), torch.load(work / "lens-memory.pt")
            print(f"lens offload logits == lens in-memory logits: {torch.equal(a, b)}")
            peak = max(results["lens-offload"]["load_peak"], results["lens-offload"]["overall_peak"])
            print(f"lens offload: resident {results['lens-offload']['resident'] / 1e6:.0f} MB of {total / 1e6:.0f} MB "
                  f"(budget {budget / 1e6:.0f} MB, + one block {(budget + block) / 1e6:.0f} MB); "
                  f"peak over load and forward {peak / 1e6:.0f} MB")  # fmt: skip
        if "error" not in results["hf-memory"] and "error" not in results["lens-memory"]:
            a, b = torch.load(work / "lens-memory.pt"), torch.load(work / "hf-memory.pt")
            print(f"lens vs HF in memory: max |logit diff| {(a - b).abs().max().item():.2e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
