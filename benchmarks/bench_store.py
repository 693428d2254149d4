"""Activation store (``lens.store``): harvest throughput, peak memory against corpus size, and two-process scaling.

GPT-2-small shape (12 layers, d_model 768, 12 heads, d_mlp 3072, vocab 50257, n_ctx 1024), random weights, fp32
CPU, contexts of 128 random token ids (a token-id array, so no tokenisation is measured, no BOS), batch 8.

1. Throughput: ``lens.store.harvest`` of ``blocks.5.hook_resid_post`` and ``blocks.11.hook_resid_post`` into a
   fresh folder (``--shard-contexts`` 8: one batch per shard, >= 4 shards) against ``model.run_with_cache(batch,
   names_filter=hooks)`` over the same batches with the results thrown away, and against ``run_with_cache(...,
   stop_at_layer=12)`` (the harvest stops after the last block it needs, so this is the like-for-like peer).
   ``--rounds`` rounds, the contenders' order alternating; tokens/s over all rounds. Target: harvest >= 0.85x.
   Also printed: the fixed cost of one harvest call (everything before its first batch: hashing the weights,
   the shape probe, the folder; and the final manifest, which hashes the weights again), and the throughput
   with that cost taken out.
2. Peak memory: harvests of N and 10N tokens (``--mem-tokens``; hooks ``blocks.0/1.hook_resid_post``, same row
   size, only two blocks to compute), each in a fresh subprocess, measuring the rise of the resident high-water
   mark (``VmHWM``, reset through ``/proc/self/clear_refs``) over the RSS before the call: for the whole call,
   and split into the setup (up to the first batch: hashing the weights, the probe), the compute loop (every
   batch and shard write) and the final manifest (which hashes the weights again). Target: 10x the tokens
   raises the process's peak RSS (``VmHWM``, the model included) by <= 10%. The rise itself is bounded by the
   shards in flight (the one being computed, two queued, the one being written, and its bytes), so it does
   not grow with the corpus; a longer run only samples more of its variation.
3. Scaling: a random GPT-2-small-shaped Hugging Face model (``benchmarks._common.gpt2_small``) saved with
   ``save_pretrained`` (lens has no checkpoint writer of its own; ``from_pretrained`` reads the directory),
   harvested by the CLI ``python -m lens.store harvest --model DIR`` with one process x 2 threads
   (``OMP_NUM_THREADS=2``) and by ``python -m torch.distributed.run --nproc_per_node=2`` x 1 thread.
   Tokens/s from the first manifest's write (after model loading and the shape probe) to the final
   manifest's, and of the whole command; whether the two stores' shards are byte-identical.

Run: ``.venv/bin/python -m benchmarks.bench_store [--tokens 16384] [--rounds 2] [--mem-tokens 8192]
[--dist-tokens 16384] [--skip-memory] [--skip-dist]`` (about 2.5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import ROOT, gpt2_small, peak_bytes_since, reset_peak

VOCAB, CONTEXT, BATCH = 50257, 128, 8
HOOKS = ["blocks.5.hook_resid_post", "blocks.11.hook_resid_post"]
MEM_HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def gpt2_shape_lens():
    import lens

    cfg = lens.TransformerConfig(
        n_layers=12, d_model=768, n_heads=12, d_mlp=3072, d_vocab=VOCAB, n_ctx=1024, act_fn="gelu_new",
        model_name="gpt2-shape",
    )  # fmt: skip
    return lens.HookedTransformer(cfg, seed=0).eval()


def random_ids(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=n, dtype=np.int64)


def _harvest(model, ids, hooks, out, shard_contexts):
    import lens.store

    return lens.store.harvest(
        model, ids, hooks=hooks, context_size=CONTEXT, batch_size=BATCH, out_dir=out, prepend_bos=False,
        shard_contexts=shard_contexts, progress=False,
    )  # fmt: skip


# -- 1. throughput ---------------------------------------------------------------------------------------


def throughput(args) -> None:
    import lens.store

    model = gpt2_shape_lens()
    stop = 1 + max(int(h.split(".")[1]) for h in HOOKS)
    ids = random_ids(args.tokens)
    batches = torch.from_numpy(ids[: args.tokens // CONTEXT * CONTEXT].reshape(-1, CONTEXT)).split(BATCH)
    n_tokens = sum(b.numel() for b in batches)
    work = Path(tempfile.mkdtemp(prefix="lens-bench-store-"))

    def run_rwc(**kw):
        with torch.no_grad():
            for b in batches:
                model.run_with_cache(b, names_filter=HOOKS, **kw)

    seconds = {"harvest": [], "run_with_cache(stop_at_layer)": [], "run_with_cache": []}
    fixed, shards = [], 0
    module = sys.modules["lens.store.harvest"]  # (lens.store.harvest is the function)
    real_write, marks = module._write_manifest, {}

    def first_batch(block, inputs):  # the compute loop's first forward (the shape probe has 2 positions)
        if "first" not in marks and inputs[0].shape[1] == CONTEXT:
            marks["first"] = time.perf_counter()

    def write_manifest(out, ident, records, model_):
        if records is None:
            return real_write(out, ident, records, model_)
        marks["final"] = time.perf_counter()  # the compute loop and every shard write are over
        return real_write(out, ident, records, model_)

    handle = model.blocks[0].register_forward_pre_hook(first_batch)
    module._write_manifest = write_manifest
    try:
        with torch.no_grad():
            model(batches[0], return_type=None)  # warm-up
        for r in range(args.rounds):
            names = list(seconds) if r % 2 == 0 else list(reversed(seconds))
            for name in names:
                marks.clear()
                t0 = time.perf_counter()
                if name == "harvest":
                    out = _harvest(model, ids, HOOKS, work / f"round-{r}", args.shard_contexts)
                else:
                    run_rwc(**({"stop_at_layer": stop} if "stop" in name else {}))
                t1 = time.perf_counter()
                seconds[name].append(t1 - t0)
                if name == "harvest":  # before the first batch (weights hash, probe) + from the final manifest on
                    fixed.append((marks["first"] - t0) + (t1 - marks["final"]))
                    store = lens.store.open(out)
                    shards = len(store.shards)
                    assert len(store) == n_tokens, (len(store), n_tokens)
                    shutil.rmtree(out)
    finally:
        handle.remove()
        module._write_manifest = real_write
        shutil.rmtree(work, ignore_errors=True)
    rate = {k: args.rounds * n_tokens / sum(v) for k, v in seconds.items()}
    print(f"1. throughput: {n_tokens} tokens x {args.rounds} rounds, {len(batches)} batches of {BATCH}x{CONTEXT}, "
          f"hooks {HOOKS}, {shards} shards per harvest, {torch.get_num_threads()} threads")  # fmt: skip
    for k, v in seconds.items():
        rounds = " ".join(f"{s:.2f}" for s in v)
        print(f"   {k:30s} {rate[k]:8.0f} tokens/s   (seconds per round: {rounds})")
    fixed_s = sum(fixed) / len(fixed)
    steady = args.rounds * n_tokens / (sum(seconds["harvest"]) - sum(fixed))
    print(f"   harvest fixed cost per call (before the first batch + the final manifest): {fixed_s:.2f} s; "
          f"harvest without it: {steady:.0f} tokens/s")  # fmt: skip
    for peer in ("run_with_cache", "run_with_cache(stop_at_layer)"):
        per_round = " ".join(f"{b / a:.3f}" for a, b in zip(seconds["harvest"], seconds[peer]))
        print(f"   harvest / {peer}: {rate['harvest'] / rate[peer]:.3f}x (per round {per_round}); "
              f"without the fixed cost {steady / rate[peer]:.3f}x   [target >= 0.85]")  # fmt: skip


# -- 2. peak memory against corpus size -------------------------------------------------------------------


def measure_peak(tokens: int, shard_contexts: int, threads: int) -> dict:
    """In this (fresh) process: harvest ``tokens`` random ids with MEM_HOOKS; peaks over the RSS before the call."""
    import lens.store

    torch.set_num_threads(threads)
    model = gpt2_shape_lens()
    ids = random_ids(tokens)
    with torch.no_grad():
        model(torch.from_numpy(ids[: BATCH * CONTEXT].reshape(BATCH, CONTEXT)), return_type=None, stop_at_layer=2)
    module = sys.modules["lens.store.harvest"]  # (lens.store.harvest is the function)
    real_write = module._write_manifest
    marks: dict[str, int] = {}

    def first_batch(block, inputs):  # the compute loop's first forward (the shape probe has 2 positions)
        if "setup" not in marks and inputs[0].shape[1] == CONTEXT:
            marks["setup"] = peak_bytes_since(base)
            marks["loop_start_rss"] = reset_peak() - base

    def write_manifest(out, ident, records, model_):
        if records is not None:  # the final manifest: the compute loop and every shard write are over
            marks["loop"] = peak_bytes_since(base)
            marks["final"] = reset_peak() - base
        return real_write(out, ident, records, model_)

    handle = model.blocks[0].register_forward_pre_hook(first_batch)
    module._write_manifest = write_manifest
    out = Path(tempfile.mkdtemp(prefix="lens-bench-store-mem-"))
    try:
        base = reset_peak()
        t0 = time.perf_counter()
        _harvest(model, ids, MEM_HOOKS, out / "store", shard_contexts)
        seconds = time.perf_counter() - t0
        final = peak_bytes_since(base)
        summary = lens.store.info(out / "store")
    finally:
        handle.remove()
        module._write_manifest = real_write
        shutil.rmtree(out, ignore_errors=True)
    whole = max(marks["setup"], marks["loop"], final)
    return dict(tokens=tokens, rows=summary["rows"], shards=summary["shards"], bytes=summary["bytes"], whole=whole,
                process_peak=base + whole,
                setup=marks["setup"], loop=marks["loop"], loop_start=marks["loop_start_rss"],
                final=final, seconds=seconds)  # fmt: skip


def memory(args) -> None:
    results = []
    for tokens in (args.mem_tokens, 10 * args.mem_tokens):
        cmd = [sys.executable, "-m", "benchmarks.bench_store", "--measure-peak", str(tokens),
               "--shard-contexts", str(args.shard_contexts), "--threads", str(args.threads)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            print(f"2. peak memory: the {tokens}-token run failed:\n{proc.stderr[-2000:]}")
            return
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    shard_mb = results[0]["bytes"] / results[0]["shards"] / 1e6
    print(f"2. peak memory: hooks {MEM_HOOKS}, {args.shard_contexts} contexts ({shard_mb:.1f} MB) per shard, "
          "a fresh process per run, rise of VmHWM over the RSS before the call")  # fmt: skip
    for r in results:
        print(f"   {r['tokens']:7d} tokens ({r['shards']:3d} shards, {r['bytes'] / 1e6:6.1f} MB on disk, "
              f"{r['seconds']:4.1f} s): whole call {r['whole'] / 1e6:6.1f} MB = max(setup {r['setup'] / 1e6:.1f}, "
              f"compute loop {r['loop'] / 1e6:.1f} (RSS at its start {r['loop_start'] / 1e6:.1f}), "
              f"final manifest {r['final'] / 1e6:.1f})")  # fmt: skip
    small, big = results
    a, b = small["process_peak"], big["process_peak"]
    print(f"   process peak RSS (VmHWM, model included): {a / 1e6:.1f} MB and {b / 1e6:.1f} MB: "
          f"10x tokens / 1x tokens {b / a:.3f}   [target <= 1.10]")  # fmt: skip
    for key, what in (("whole", "whole call"), ("loop", "compute loop")):
        print(f"   10x tokens / 1x tokens, rise over the RSS before the call, {what}: {big[key] / small[key]:.3f}")


# -- 3. one process x 2 threads vs two processes x 1 thread ------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed_cli(cmd: list[str], threads: int, out: Path) -> dict:
    """Run ``cmd``; tokens/s from the first manifest's mtime (its first sight) to the final manifest's mtime."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    manifest = out / "manifest.json"
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = None
    while proc.poll() is None:
        if first is None and manifest.exists():
            try:
                first = manifest.stat().st_mtime
            except FileNotFoundError:  # replaced between the two calls
                pass
        time.sleep(0.02)
    wall = time.time() - t0
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed:\n{stderr[-3000:]}")
    data = json.loads(manifest.read_text())["store"]
    return dict(harvest_s=manifest.stat().st_mtime - first, wall_s=wall, rows=data["rows"],
                shas=[r["sha256"] for r in data["shards"]], tail=stdout.strip().splitlines()[-1])  # fmt: skip


def scaling(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="lens-bench-store-dist-"))
    try:
        model_dir = work / "gpt2-shape"
        gpt2_small().save_pretrained(model_dir, safe_serialization=True)
        np.save(work / "ids.npy", random_ids(args.dist_tokens, seed=1))
        common = ["-m", "lens.store", "harvest", "--model", str(model_dir), "--source", str(work / "ids.npy"),
                  "--hooks", *HOOKS, "--context-size", str(CONTEXT), "--batch-size", str(BATCH),
                  "--shard-contexts", str(args.shard_contexts), "--max-tokens", str(args.dist_tokens)]  # fmt: skip
        single = _timed_cli([sys.executable, *common, "--out", str(work / "one")], 2, work / "one")
        dist_cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=1",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={_free_port()}",
            *common,
            "--out",
            str(work / "two"),
        ]
        dist = _timed_cli(dist_cmd, 1, work / "two")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tokens = single["rows"]
    print(f"3. scaling: CLI harvest of {tokens} tokens, hooks {HOOKS}, {len(single['shas'])} shards, model loaded "
          "from a Hugging Face GPT-2 directory")  # fmt: skip
    rates = {}
    for name, r in (("1 process x 2 threads", single), ("2 processes x 1 thread (torchrun)", dist)):
        rates[name] = tokens / r["harvest_s"], tokens / r["wall_s"]
        print(f"   {name:34s} {rates[name][0]:7.0f} tokens/s harvesting ({r['harvest_s']:.1f} s), "
              f"{rates[name][1]:7.0f} tokens/s whole command ({r['wall_s']:.1f} s)")  # fmt: skip
    (h1, w1), (h2, w2) = rates.values()
    print(f"   2 processes / 1 process: {h2 / h1:.3f}x harvesting, {w2 / w1:.3f}x whole command")
    same = single["shas"] == dist["shas"]
    print(f"   shard files byte-identical between the two stores: {same}"
          + ("" if same else f" ({sum(a == b for a, b in zip(single['shas'], dist['shas']))} of "
                             f"{len(single['shas'])} equal)"))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=16384, help="tokens per throughput round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mem-tokens", type=int, default=8192, help="N of the N vs 10N peak-memory runs")
    ap.add_argument("--dist-tokens", type=int, default=16384)
    ap.add_argument("--shard-contexts", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-dist", action="store_true")
    ap.add_argument("--measure-peak", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure_peak:
        print(json.dumps(measure_peak(args.measure_peak, args.shard_contexts, args.threads)))
        return
    torch.set_num_threads(args.threads)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, torch {torch.__version__}")
    t0 = time.perf_counter()
    if not args.skip_throughput:
        throughput(args)
    if not args.skip_memory:
        memory(args)
    if not args.skip_dist:
        scaling(args)
    print(f"total {time.perf_counter() - t0:.0f} s, load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
