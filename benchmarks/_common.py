"""Shared benchmark helpers: interleaved timing and peak-memory measurement in a fresh process.

Timings alternate between the contenders (lens, HF, ...) so background load hits all of them alike,
and report the median of each. Peak memory is the rise of the process's resident high-water mark
(``VmHWM``, reset through ``/proc/self/clear_refs``) during one call, measured in a subprocess so
one contender's allocations never hide another's.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round-robin."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def _status_kib(field: str) -> int:
    text = open("/proc/self/status").read()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))


def reset_peak() -> int:
    """Reset the resident high-water mark; returns the current resident size in bytes."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_kib("VmRSS") * 1024


def peak_bytes_since(baseline: int) -> int:
    return _status_kib("VmHWM") * 1024 - baseline


def run_subprocess(module: str, *args: str, python: str | None = None) -> dict:
    """Run ``python -m module args`` (in the repo root) and parse the JSON it prints on its last line."""
    root = str(Path(__file__).parent.parent)
    out = (
        subprocess.run(
            [python or sys.executable, "-m", module, *args], check=True, capture_output=True, text=True, cwd=root
        )
        .stdout.strip()
        .splitlines()
    )
    return json.loads(out[-1])


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def gpt2_small(n_layer: int = 12):
    """The Hugging Face peer: a random-weight GPT-2-small-shaped ``GPT2LMHeadModel`` (seed 0), eval mode."""
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=n_layer, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
    return transformers.GPT2LMHeadModel(cfg).eval()


def tl_gpt2_small():
    """The TransformerLens peer in the same shape (its own random weights), on CPU, eval mode."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=12, d_model=768, d_head=64, n_heads=12, d_mlp=3072, d_vocab=50257, n_ctx=1024,
        act_fn="gelu_new", normalization_type="LN", device="cpu",
    )  # fmt: skip
    return HookedTransformer(cfg).eval()
