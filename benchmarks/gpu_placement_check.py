"""Placement on real devices: ``cuda:0`` + ``cpu`` (CPU-RAM offload), ``cuda:0`` + ``disk``, a 2-GPU split.

The prepared check for issue #14's GPU part (run it where a GPU is lent; the CPU test suite covers the rest).
Writes a random Llama-shaped checkpoint (``bench_loading``'s writer), loads it once on one device as the
reference, then once per placement, and checks for each:

* the logits equal the single-device model's (max |diff| printed; 0 expected: the same kernels run);
* every hook sees its activation on its block's device (``model.block_devices()``);
* ``run_with_cache(cache_device="cpu")`` gathers every activation on the CPU, equal to the reference cache;
* greedy ``generate`` gives the reference's tokens, and each layer's KV cache lives on its block's device;
* throughput: forward tokens/s and greedy decode tokens/s, against the single-device model.

Placements: ``{"": "cuda:0", later half of the blocks: "cpu"}`` and ``device_map="auto"`` with
``max_memory={0: root + 2 blocks, "cpu": ...}`` (offload to CPU RAM), ``{"": "cuda:0", last block: "disk"}``,
and with two or more GPUs ``n_devices=2`` and ``device_map="balanced"``. Without a GPU it checks the CPU +
disk placements instead, so the script itself is exercised anywhere. Exits 1 on any mismatch.

Run: ``python -m benchmarks.gpu_placement_check [--size-mb 300] [--pos 256] [--new-tokens 32]``
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_loading import write_checkpoint
from lens import HookedTransformer
from lens.generation import KVCache


def _timed(fn, repeats: int = 3) -> float:
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def _placements(n_layers: int, root: int, block: int, offload: Path) -> dict[str, dict]:
    half = {f"blocks.{i}": "cpu" for i in range(n_layers // 2, n_layers)}
    last = f"blocks.{n_layers - 1}"
    gpus = torch.cuda.device_count()
    if gpus == 0:
        return {
            "cpu + disk (half the blocks)": dict(
                device_map={"": "cpu", **{k: "disk" for k in half}}, offload_folder=offload / "a"
            ),  # fmt: skip
            "auto, cpu budget root + 2 blocks": dict(
                device_map="auto", max_memory={"cpu": root + 2 * block}, offload_folder=offload / "b"
            ),  # fmt: skip
        }
    cases = {
        "cuda:0 + cpu (half the blocks in CPU RAM)": dict(device_map={"": "cuda:0", **half}),
        "auto, cuda:0 budget root + 2 blocks": dict(
            device_map="auto", max_memory={0: root + 2 * block, "cpu": 64 << 30}, offload_folder=offload / "a"
        ),
        "cuda:0 + disk (last block)": dict(device_map={"": "cuda:0", last: "disk"}, offload_folder=offload / "b"),
    }
    if gpus >= 2:
        cases["n_devices=2"] = dict(n_devices=2)
        cases["balanced over all GPUs"] = dict(device_map="balanced")
    return cases


def check(model: HookedTransformer, reference: HookedTransformer, toks: torch.Tensor, new: int) -> dict:
    """Compare a placed ``model`` with ``reference`` (see the module docs); returns what was found."""
    with torch.no_grad():
        ref_logits = reference(toks)
        logits = model(toks)
        diff = (logits.to(ref_logits.device) - ref_logits).abs().max().item()
        seen: dict[int, torch.device] = {}

        def record(x, hook):
            seen[int(hook.name.split(".")[1])] = x.device

        with model.hooks(fwd_hooks=[(lambda n: n.endswith("hook_resid_pre"), record)]):
            model(toks[:, :8])
        hooks_ok = [seen[i] for i in range(model.cfg.n_layers)] == model.block_devices()
        _, cache = model.run_with_cache(toks[:, :16], cache_device="cpu")
        _, ref_cache = reference.run_with_cache(toks[:, :16], cache_device="cpu")
        cache_ok = all(cache[k].device.type == "cpu" for k in cache.keys()) and max(
            (cache[k] - ref_cache[k]).abs().max().item() for k in ref_cache.keys()
        ) <= max(diff, 1e-6)
        kv = KVCache.for_model(model, batch=1, max_len=16)
        kv_ok = [
            {getattr(store, n).device for n in store.tensors()} == {dev}
            for store, dev in zip(kv.layers, model.block_devices())
        ]  # fmt: skip
        prompt = toks[:1, :16]
        kw = dict(max_new_tokens=new, do_sample=False, stop_at_eos=False, verbose=False)
        same_tokens = torch.equal(model.generate(prompt, **kw).cpu(), reference.generate(prompt, **kw).cpu())
        fwd_s = _timed(lambda: model(toks))
        ref_fwd_s = _timed(lambda: reference(toks))
        gen_s = _timed(lambda: model.generate(prompt, **kw), repeats=1)
        ref_gen_s = _timed(lambda: reference.generate(prompt, **kw), repeats=1)
    return dict(
        max_logit_diff=diff, hooks_on_block_devices=hooks_ok, cache_on_cpu_equal=cache_ok,
        kv_on_block_devices=all(kv_ok),
        greedy_equal=same_tokens, forward_tok_s=toks.numel() / fwd_s, ref_forward_tok_s=toks.numel() / ref_fwd_s,
        decode_tok_s=new / gen_s, ref_decode_tok_s=new / ref_gen_s,
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=300.0)
    parser.add_argument("--pos", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    main_device = "cuda:0" if torch.cuda.is_available() else "cpu"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    print(f"torch {torch.__version__}; GPUs: {names or 'none (checking CPU + disk placements)'}")
    work = Path(tempfile.mkdtemp(prefix="lens-gpu-placement-"))
    failures = 0
    try:
        (work / "ckpt").mkdir()
        write_checkpoint(work / "ckpt", args.size_mb)
        reference = HookedTransformer.from_pretrained(work / "ckpt", dtype="float32", device=main_device).eval()
        root = sum(p.numel() * 4 for n, p in reference.named_parameters() if not n.startswith("blocks."))
        block = sum(p.numel() * 4 for p in reference.blocks[0].parameters())
        print(f"model: {reference.cfg.n_layers} blocks of {block / 1e6:.1f} MB, root {root / 1e6:.0f} MB; "
              f"reference on {main_device}; forward 1x{args.pos}, greedy {args.new_tokens} tokens")  # fmt: skip
        toks = torch.randint(0, reference.cfg.d_vocab, (1, args.pos), generator=torch.Generator().manual_seed(0))
        toks = toks.to(main_device)
        for label, kw in _placements(reference.cfg.n_layers, root, block, work / "offload").items():
            try:
                model = HookedTransformer.from_pretrained(work / "ckpt", dtype="float32", **kw).eval()
                where = sorted({str(v) for v in model.placement.device_map.values()})
                r = check(model, reference, toks, args.new_tokens)
            except Exception as e:  # report and go on to the next placement
                print(f"[FAIL] {label}: {type(e).__name__}: {e}")
                failures += 1
                continue
            ok = r["max_logit_diff"] == 0 and all(
                r[k] for k in ("hooks_on_block_devices", "cache_on_cpu_equal", "kv_on_block_devices", "greedy_equal")
            )
            failures += not ok
            print(
                f"[{'ok' if ok else 'FAIL'}] {label}: devices {where}, {len(model.placement.offloaded)} offloaded; "
                f"max|dlogit| {r['max_logit_diff']:.2e}; hooks on block devices {r['hooks_on_block_devices']}; "
                f"cpu cache equal {r['cache_on_cpu_equal']}; KV per layer device {r['kv_on_block_devices']}; "
                f"greedy equal {r['greedy_equal']}; forward {r['forward_tok_s']:.0f} tok/s "
                f"({r['forward_tok_s'] / r['ref_forward_tok_s']:.2f}x single device), decode "
                f"{r['decode_tok_s']:.1f} tok/s ({r['decode_tok_s'] / r['ref_decode_tok_s']:.2f}x)"
            )
            del model
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("all placements match the single-device model" if not failures else f"{failures} placement(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
