"""Activation store in a minute: harvest two hooks of an embedded model over the Python standard library's
source, read the store back memory-mapped, draw one training batch, and verify it.

    python demos/activation_store.py            # into a temporary folder, removed afterwards
    python demos/activation_store.py acts/      # into acts/ (re-running it resumes / reuses the store)

The same harvest from the shell (docs/activation-store.md)::

    python -m lens.store harvest --model gelu-4l --source <stdlib>/*.py --out acts \\
        --hooks blocks.1.hook_resid_post blocks.3.hook_mlp_out --context-size 128 --batch-size 32 \\
        --max-tokens 100000
"""

from __future__ import annotations

import glob
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

import lens
import lens.store

HOOKS = ["blocks.1.hook_resid_post", "blocks.3.hook_mlp_out"]
CONTEXT, BATCH, MAX_TOKENS = 128, 32, 100_000


def main(argv: list[str]) -> None:
    temporary = len(argv) < 2
    out = Path(tempfile.mkdtemp(prefix="lens-store-demo-")) / "acts" if temporary else Path(argv[1])
    try:
        model = lens.zoo.load("gelu-4l")
        files = sorted(glob.glob(sysconfig.get_paths()["stdlib"] + "/*.py"))
        print(f"source: {len(files)} files of {sysconfig.get_paths()['stdlib']}")

        t0 = time.perf_counter()
        lens.store.harvest(
            model, files, hooks=HOOKS, context_size=CONTEXT, batch_size=BATCH, out_dir=out,
            max_tokens=MAX_TOKENS, progress=False,
        )  # fmt: skip
        print(f"harvested into {out} in {time.perf_counter() - t0:.1f} s")

        store = lens.store.open(out)
        print(f"rows: {len(store)}")
        print(f"shards: {len(store.shards)}")
        for hook in store.hooks:
            column = store[hook]
            stats = store.stats(hook)
            print(f"{hook}: shape {tuple(column.shape)} {column.dtype}, mean L2 norm {stats['norm_mean']:.3f}, "
                  f"mean |mean| {stats['mean'].abs().mean():.4f}, mean std {stats['std'].mean():.4f}")  # fmt: skip

        # tokens and index line up with the activations row for row: [context number, position]
        kept = len(store.identity["kept_positions"])  # 127: position 0 (BOS) is not stored
        print(f"index of rows 0..2: {store.index[0:3].tolist()}; {kept} rows per context")
        text = model.to_string(store.tokens[0:kept])
        print(f"context 0 reads: {text[:60]!r}...")

        # a training stream: shuffled rows from a buffer of shards, as a DataLoader would draw them
        stream = store.stream(hooks=HOOKS[0], batch_size=1024, shuffle=True, seed=0)
        loader = torch.utils.data.DataLoader(stream, batch_size=None)
        batch = next(iter(loader))
        print("one batch: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in batch.items()))
        print(f"batches per epoch: {len(stream)}")

        problems = lens.store.verify(out)
        print(f"verify: {'OK' if not problems else problems}")
    finally:
        if temporary:
            shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv)
