"""Shared benchmark helpers: interleaved timing and peak-memory measurement in a fresh process.

Timings alternate between the contenders (lens, HF, ...) so background load hits all of them alike,
and report the median of each. Peak memory is the rise of the process's resident high-water mark
(``VmHWM``, reset through ``/proc/self/clear_refs``) during one call, measured in a subprocess so
one contender's allocations never hide another's.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
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


def from_hf_model(hf_model, **kw):
    """A :class:`lens.HookedTransformer` with ``hf_model``'s weights, from whichever ``lens`` is imported.

    ``from_hf_model`` lived in ``lens.adapters`` and moves to ``lens.loading`` (which may ask for the
    ``model_class`` to build); this finds it in either place, so the benchmarks also run on older trees.
    """
    import inspect

    from lens import HookedTransformer

    for module in ("lens.loading", "lens.adapters", "lens.families"):
        try:
            fn = importlib.import_module(module).from_hf_model
        except (ImportError, AttributeError):
            continue
        if "model_class" in inspect.signature(fn).parameters:
            kw = {"model_class": HookedTransformer, **kw}
        return fn(hf_model, **kw)
    raise ImportError("no from_hf_model in lens.loading, lens.adapters or lens.families")


# -- measuring another revision of lens in the same run ----------------------------------------------
#
# Two versions of the ``lens`` package cannot live in one interpreter, so the revision to compare against
# runs in a worker subprocess: ``git worktree`` checks it out into a temporary directory, and the worker
# imports ``lens`` from there (``PYTHONPATH``) but *this* checkout's ``benchmarks`` package (its working
# directory holds only a link to it), so both sides run the same benchmark code. The two processes take
# turns (the parent waits while the worker times a round, and the worker waits while the parent does),
# so background load hits both sides alike and they never compete for cores.

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def baseline_checkout(ref: str) -> Iterator[tuple[Path, Path, str]]:
    """``(worktree, working directory for the worker, commit)`` for ``ref``; all removed afterwards."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="lens-bench-baseline-"))
    tree, run_dir = tmp / "tree", tmp / "run"
    try:
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT, check=True, capture_output=True
        )
        run_dir.mkdir()
        (run_dir / "benchmarks").symlink_to(ROOT / "benchmarks", target_is_directory=True)
        yield tree, run_dir, commit
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)


class SideWorker:
    """A long-lived ``python -m module --side-worker ...`` importing ``lens`` from ``tree``.

    It speaks JSON lines: each :meth:`call` sends ``{"cmd": name, **kw}`` and waits for one reply line.
    The worker's other output goes to this process's stderr.
    """

    def __init__(self, module: str, tree: Path, run_dir: Path, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(tree), LENS_BENCH_EXPECT_ROOT=str(tree))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--side-worker", *args],
            cwd=run_dir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        self.info = self._read()  # the worker's first line: where its lens came from

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"baseline worker exited (code {self.proc.wait()}); its stderr is above")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"baseline worker failed: {reply['error']}")
        return reply

    def call(self, cmd: str, **kw) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("quit")
            except (RuntimeError, BrokenPipeError, ValueError):
                pass
            self.proc.wait(timeout=60)


def serve_side(make_side: Callable[[], object]) -> None:
    """The worker's loop: call ``side.<cmd>(**kw)`` for each request line, answer with its JSON result.

    The protocol keeps the real stdout; anything else printed goes to stderr. The first line says which
    ``lens`` was imported, and the worker refuses to run if it is not the checkout it was started for.
    """
    proto, sys.stdout = sys.stdout, sys.stderr
    import lens

    origin = Path(lens.__file__).resolve().parent.parent
    expect = os.environ.get("LENS_BENCH_EXPECT_ROOT")
    if expect and origin != Path(expect).resolve():
        proto.write(json.dumps({"error": f"imported lens from {origin}, expected {expect}"}) + "\n")
        proto.flush()
        return
    side = make_side()
    proto.write(json.dumps({"lens": str(origin)}) + "\n")
    proto.flush()
    for line in sys.stdin:
        req = json.loads(line)
        cmd = req.pop("cmd")
        if cmd == "quit":
            proto.write("{}\n")
            proto.flush()
            return
        try:
            reply = getattr(side, cmd)(**req)
        except Exception as e:  # report it to the parent rather than die silently
            import traceback

            traceback.print_exc()
            reply = {"error": f"{cmd}: {type(e).__name__}: {e}"}
        proto.write(json.dumps(reply) + "\n")
        proto.flush()
