"""Speculative decoding workloads of ``benchmarks/bench_generate.py``: prompt lookup and draft models.

Two targets, each continuing a standard-library source file greedily (no EOS stop), timed against lens's own
plain greedy ``generate`` in the same rounds (calls alternate, medians over rounds):

- **the embedded ``gelu-4l``** (byte vocabulary, context 256): the prompt is BOS plus 159 bytes of code from
  ``argparse.py`` (a file held out of the zoo's training set), starting at its first method definition after
  byte 5000; 96 new tokens. Drafts: prompt lookup (10 tokens, 2-grams) and ``attn-only-2l`` (same byte
  vocabulary) as the assistant model (K = 5, adaptive);
- **the GPT-2-small shape** (random weights, seed 0, as the rest of bench_generate): the prompt is the first
  512 bytes of ``shutil.py`` as token ids (no GPT-2 tokenizer offline; byte values are valid ids); 128 new
  tokens. Drafts: prompt lookup, and a 2-layer draft made of the target's own embeddings, first two blocks,
  final norm and unembedding (a shallow copy of the target, as a distilled draft would be).

Reported per workload and draft: tokens/s, speed-up over plain greedy, whether the tokens equal plain greedy's,
the acceptance rate (accepted / proposed), target forwards, tokens per forward, and the bandwidth fraction
``target weight bytes x tokens/s / read bandwidth``, which exceeds 1.0 once a forward yields several tokens.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

NEW_ZOO, NEW_GPT2 = 96, 128


def _held_out(name: str) -> bytes:
    from lens.zoo.train import HELD_OUT_EVERY, corpus_files

    held = {Path(f).name: f for f in corpus_files()[::HELD_OUT_EVERY]}
    if name not in held:
        raise ValueError(f"{name} is not a held-out stdlib file here; held out: {sorted(held)}")
    return Path(held[name]).read_bytes()


def zoo_workload() -> dict:
    import lens.zoo

    src = _held_out("argparse.py")
    start = src.index(b"\n    def ", 5000)
    prompt = torch.tensor([[256, *src[start : start + 159]]])
    target, draft = lens.zoo.load("gelu-4l").eval(), lens.zoo.load("attn-only-2l").eval()
    return {"name": "gelu-4l", "target": target, "draft": draft, "prompt": prompt, "new": NEW_ZOO}


def gpt2_workload(quick: bool) -> dict:
    from benchmarks._common import from_hf_model, gpt2_small

    hf = gpt2_small()
    target = from_hf_model(hf).eval()
    small = gpt2_small(n_layer=2)
    missing = small.load_state_dict(hf.state_dict(), strict=False).missing_keys
    if missing:
        raise RuntimeError(f"the 2-layer draft lacks {missing}")
    draft = from_hf_model(small).eval()
    prompt = torch.tensor([list(_held_out("shutil.py")[:512])])
    return {"name": "gpt2-small", "target": target, "draft": draft, "prompt": prompt, "new": 32 if quick else NEW_GPT2}


def _contenders(w: dict) -> dict[str, Callable[[], object]]:
    m, p, n = w["target"], w["prompt"], w["new"]
    common = dict(stop_at_eos=False, return_stats=True)
    return {
        "plain": lambda: m.generate(p, n, **common),
        "prompt_lookup": lambda: m.generate(p, n, prompt_lookup_num_tokens=10, **common),
        "assistant": lambda: m.generate(p, n, assistant_model=w["draft"], num_assistant_tokens=5, **common),
    }


def run_workload(w: dict, rounds: int, bandwidth: float, step_bytes: int) -> dict:
    """Median wall time of each contender over ``rounds`` interleaved rounds, with tokens and stats."""
    fns = _contenders(w)
    first = {name: fn() for name, fn in fns.items()}  # warm-up; the tokens and stats of each
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    plain = statistics.median(times["plain"])
    out = {"prompt_len": w["prompt"].shape[1], "new_tokens": w["new"], "weight_bytes_per_forward": step_bytes}
    for name in names:
        wall, res = statistics.median(times[name]), first[name]
        s = res.stats
        out[name] = {
            "tokens_per_s": w["new"] / wall,
            "speedup_vs_plain": plain / wall,
            "same_tokens_as_plain": torch.equal(res.output, first["plain"].output),
            "proposed": s.proposed,
            "accepted": s.accepted,
            "acceptance_rate": s.acceptance_rate,
            "forwards": s.forwards,
            "draft_forwards": s.draft_forwards,
            "tokens_per_forward": s.tokens_per_forward,
            "bandwidth_fraction": step_bytes * w["new"] / wall / bandwidth,
        }
    return out


def speculative_report(rounds: int, quick: bool, bandwidth: float) -> dict:
    """Both workloads; ``bandwidth`` (bytes/s) is bench_generate's read-bandwidth probe of the same run."""
    from benchmarks.bench_generate import weight_bytes_per_step

    report = {}
    for w in (zoo_workload(), gpt2_workload(quick)):
        report[w["name"]] = run_workload(w, rounds, bandwidth, weight_bytes_per_step(w["target"]))
    return report


def print_speculative(report: dict) -> None:
    print("\nSpeculative decoding: greedy continuation of a stdlib source file, vs lens's plain greedy, same rounds")
    print(
        "| target | draft | tokens/s | vs plain | same tokens | acceptance | forwards | tokens/forward "
        "| bandwidth fraction |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for target, r in report.items():
        for name in ("plain", "prompt_lookup", "assistant"):
            x = r[name]
            acc = "-" if name == "plain" else f"{x['acceptance_rate']:.3f} ({x['accepted']}/{x['proposed']})"
            print(
                f"| {target} | {name} | {x['tokens_per_s']:.1f} | {x['speedup_vs_plain']:.2f}x "
                f"| {x['same_tokens_as_plain']} | {acc} | {x['forwards']} | {x['tokens_per_forward']:.2f} "
                f"| {x['bandwidth_fraction']:.2f} |"
            )
    for target, r in report.items():
        print(f"target: {target} prompt lookup >= 1.5x plain: {r['prompt_lookup']['speedup_vs_plain']:.2f}x")
