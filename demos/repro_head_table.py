"""Reproducible head-score table: re-running this script rewrites byte-identical result files.

Scores every head of an embedded model as previous-token / duplicate-token / induction head on seeded repeated
random text, and writes ``head_scores.csv`` plus ``manifest.json`` (versions, weights SHA-256, seeds, hooks,
command line; see :mod:`lens.repro`) to ``--out``.

    python demos/repro_head_table.py --out results/
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import lens
from lens import head_detectors, repro


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="attn-only-2l")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    seeds = repro.seed_everything(args.seed)
    torch.use_deterministic_algorithms(True)
    model = lens.zoo.load(args.model)
    tokens = head_detectors.repeated_tokens(model, seq_len=50, batch=8, seed=args.seed, token_ids=range(32, 127))
    hooks = [f"blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers)]
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens, names_filter=hooks)
        scores = head_detectors.detect_heads(model, tokens, cache=cache)

    args.out.mkdir(parents=True, exist_ok=True)
    rows = ["layer,head," + ",".join(scores)]
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            rows.append(f"{layer},{head}," + ",".join(f"{scores[k][layer, head].item():.6f}" for k in scores))
    table = args.out / "head_scores.csv"
    table.write_text("\n".join(rows) + "\n")
    command = None if argv is None else ["demos/repro_head_table.py", *argv]  # None: sys.argv
    repro.write_manifest(args.out, model=model, seeds=seeds, hooks=hooks, command=command)
    print(f"wrote {table} and {args.out / 'manifest.json'}")
    return table


if __name__ == "__main__":
    main()
