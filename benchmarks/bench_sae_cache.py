"""``run_with_cache`` with an SAE attached, against the model's cached forward plus the SAE's own matmuls.

GPT-2-small shape (random weights, fp32 CPU), a TopK SAE (d_sae = 16 x d_model, k 32) at
``blocks.6.hook_resid_post``, a batch of 4 x 128 random tokens. Measured, interleaved, median of ``--repeats``:

- ``cache``: ``model.run_with_cache(tokens)`` with no SAE;
- ``sae alone``: the SAE's forward (``sae.reconstruct``: encode, top-k, decode) on that hook's activations;
- ``cache + SAE``: ``run_with_cache(tokens)`` inside ``model.saes([sae])`` (every ``hook_sae_*`` cached too).

Prints ``cache + SAE / (cache + sae alone)`` (target <= 1.2) and the same with ``use_error_term=True`` (the
error term costs a second, unhooked SAE pass, as in SAELens). Run: ``.venv/bin/python -m benchmarks.bench_sae_cache``
(~25 s on 2 cores).
"""

from __future__ import annotations

import argparse
import os

import torch

from benchmarks._common import interleaved_times
from benchmarks.bench_store import gpt2_shape_lens

HOOK = "blocks.6.hook_resid_post"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--pos", type=int, default=128)
    args = ap.parse_args()
    import lens.sae

    torch.manual_seed(0)
    model = gpt2_shape_lens()
    d = model.cfg.d_model
    sae = lens.sae.SAE(lens.sae.SAEConfig(architecture="topk", d_in=d, d_sae=16 * d, k=32, hook_name=HOOK), seed=0)
    tokens = torch.randint(0, model.cfg.d_vocab, (args.batch, args.pos))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    acts = cache[HOOK]

    def plain():
        with torch.no_grad():
            model.run_with_cache(tokens)

    def alone():
        with torch.no_grad():
            sae.reconstruct(acts)

    def spliced(error_term):
        def run():
            with torch.no_grad(), model.saes([sae], use_error_term=error_term):
                _, c = model.run_with_cache(tokens)
            assert f"{HOOK}.hook_sae_acts_post" in c

        return run

    times = interleaved_times(
        {"cache": plain, "sae alone": alone, "cache + SAE": spliced(False), "cache + SAE + error": spliced(True)},
        repeats=args.repeats,
    )
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; tokens {args.batch}x{args.pos}, "
          f"SAE d_sae {16 * d} k 32 at {HOOK}")  # fmt: skip
    for k, v in times.items():
        print(f"   {k:22s} {v * 1e3:8.1f} ms")
    base = times["cache"] + times["sae alone"]
    print(f"   cache + SAE / (cache + SAE alone): {times['cache + SAE'] / base:.3f}   [target <= 1.2]")
    print(f"   with the error term / (cache + 2 x SAE alone): "
          f"{times['cache + SAE + error'] / (base + times['sae alone']):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
