"""Train the embedded SAEs on an embedded model's activations over the standard-library corpus, then evaluate them.

Each entry of :data:`lens.zoo.specs.SAE_SPECS` names an embedded model, a hook and ``lens.sae.train`` arguments.
Training streams activations from the model over the corpus's training files (:func:`lens.zoo.train.load_corpus`:
the same split the model was trained on), with the same determinism as :mod:`lens.zoo.train` (deterministic
algorithms, a fixed 2-thread pool), so a re-run on the same machine rewrites the same weights. The SAE is then
evaluated with :func:`lens.sae.evaluate` on held-out contexts (:func:`held_out_contexts`), and the result is
written as ``saes/NAME/`` in SAELens's format plus ``saes/NAME/zoo.json`` (recipe, metrics, wall time, SHA-256
of the weights), which :func:`lens.zoo.load_sae` checks.

Usage::

    python -m lens.zoo.train_sae gelu-4l-resid1-topk16            # writes lens/zoo/saes/NAME/
    python -m lens.zoo.train_sae gelu-4l-resid1-topk16 --steps 5 --out /tmp/saes   # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from lens.zoo.specs import SAE_SPECS

SAES_DIR = Path(__file__).parent / "saes"
REPORT_FILE = "zoo.json"


def held_out_contexts(n: int, context_size: int = 128) -> torch.Tensor:
    """The first ``n`` consecutive ``context_size``-token windows of the held-out files: BOS (256) then
    ``context_size - 1`` bytes each, ``[n, context_size]``. What the embedded SAEs are evaluated on.

    >>> held_out_contexts(4).shape
    torch.Size([4, 128])
    """
    from lens.zoo.train import load_corpus

    _, held, _ = load_corpus()
    body = context_size - 1
    if n * body > len(held):
        raise ValueError(f"n={n} contexts of {body} bytes exceed the {len(held)} held-out bytes")
    ctx = torch.from_numpy(np.ascontiguousarray(held[: n * body]).reshape(n, body))
    return torch.cat([torch.full((n, 1), 256, dtype=torch.long), ctx], dim=1)


def train_sae(name: str, steps: int | None = None, out_dir: Path = SAES_DIR, progress: bool = True) -> dict:
    """Train SAE ``name`` of :data:`SAE_SPECS`, evaluate it and write ``out_dir/NAME/``; returns the report.

    Deterministic algorithms and a 2-thread pool are switched on for the run and restored afterwards.
    """
    if name not in SAE_SPECS:
        raise ValueError(f"unknown embedded SAE {name!r}; choose from {list(SAE_SPECS)}")
    saved = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    try:
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(2)
        return _train(name, steps, Path(out_dir), progress)
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.set_num_threads(saved[1])


def _train(name: str, steps: int | None, out_dir: Path, progress: bool) -> dict:
    import lens.sae
    from lens import zoo
    from lens.zoo.train import load_corpus

    spec = SAE_SPECS[name]
    hp = dict(spec["train"])
    if steps is not None:
        hp["steps"] = steps
    model = zoo.load(spec["model"])
    train_data, _, corpus_sha = load_corpus()
    t0 = time.time()
    sae = lens.sae.train(train_data, spec["hook_name"], model=model, progress=progress, log_every=50, **hp)
    seconds = time.time() - t0
    sae.cfg.metadata.update(model_name=spec["model"], zoo_name=name)
    tokens = held_out_contexts(spec["eval_contexts"], hp["context_size"])
    metrics = lens.sae.evaluate(model, sae, tokens, batch_size=16)
    folder = out_dir / name
    sae.save(folder)
    report = {
        "name": name,
        "description": spec["description"],
        "model": spec["model"],
        "hook_name": spec["hook_name"],
        "train": hp,
        "train_seconds": round(seconds, 1),
        "train_tokens": hp["steps"] * hp["batch_size"],
        "final_train_metrics": {k: round(v, 5) for k, v in sae.cfg.metadata["training"]["metrics"].items()},
        "eval": {"contexts": spec["eval_contexts"], "context_size": hp["context_size"], "split": "held-out files",
                 "metrics": {k: (round(v, 5) if isinstance(v, float) else v) for k, v in metrics.items()}},
        "corpus_sha256": corpus_sha,
        "torch": torch.__version__,
        "sha256": zoo.sha256_of(folder / "sae_weights.safetensors"),
    }  # fmt: skip
    (folder / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
    m = report["eval"]["metrics"]
    print(f"[{name}] held-out EV {m['explained_variance']:.3f}, L0 {m['l0']:.1f}, CE score {m['ce_loss_score']:.3f}")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=list(SAE_SPECS), help=f"SAEs to train (default: {list(SAE_SPECS)})")
    parser.add_argument("--steps", type=int, default=None, help="override the number of steps (smoke runs)")
    parser.add_argument("--out", type=Path, default=SAES_DIR, help="output directory (one folder per SAE)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    for name in args.names:
        if name not in SAE_SPECS:
            parser.error(f"unknown SAE {name!r}; choose from {list(SAE_SPECS)}")
        train_sae(name, args.steps, args.out, progress=not args.no_progress)


if __name__ == "__main__":
    main()
