"""Train the embedded models on the Python standard library's source, deterministically on CPU.

The corpus is every top-level ``*.py`` file of the running interpreter's standard library (every machine
has it), byte-tokenized with lens's built-in tokenizer; files whose sorted index is a multiple of 20 are
held out. Training uses lens's own ``HookedTransformer`` (AdamW, linear warm-up then cosine decay,
seeded data order, deterministic algorithms, fixed thread count), so two runs on the same machine and
Python version produce byte-identical weights. Results (loss curve, held-out loss, per-head induction
scores, SHA-256 of the weights and of the corpus) are written beside the weights.

Usage::

    python -m lens.zoo.train attn-only-2l gelu-4l          # writes lens/zoo/weights/NAME.{safetensors,json}
    python -m lens.zoo.train attn-only-2l --steps 20 --out /tmp/zoo   # a quick smoke run
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import platform
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch

from lens.zoo.specs import SPECS

WEIGHTS_DIR = Path(__file__).parent / "weights"
HELD_OUT_EVERY = 20


def corpus_files() -> list[str]:
    """Sorted top-level standard-library source files of this interpreter."""
    return sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))


def load_corpus() -> tuple[np.ndarray, np.ndarray, str]:
    """(train bytes, held-out bytes, SHA-256 of the whole corpus), files separated by EOS (257)."""
    train, held, digest = [], [], hashlib.sha256()
    for i, path in enumerate(corpus_files()):
        data = Path(path).read_bytes()
        digest.update(os.path.basename(path).encode() + b"\0" + data)
        arr = np.frombuffer(data + b"\n", dtype=np.uint8).astype(np.int64)
        (held if i % HELD_OUT_EVERY == 0 else train).append(np.append(arr, 257))
    return np.concatenate(train), np.concatenate(held), digest.hexdigest()


PRINTABLE = np.arange(32, 127)


def batches(
    data: np.ndarray, batch: int, seq: int, rng: np.random.Generator, repeat_fraction: float = 0.0
) -> torch.Tensor:
    """A batch of ``seq``-byte windows starting with BOS (256), at seeded random offsets.

    With ``repeat_fraction > 0``, that fraction of windows is replaced by a synthetic copy task: a random span
    of printable ASCII (5-60 bytes) tiled across the whole window. Predicting each repeat rewards
    content-based induction (the period varies, so no positional shortcut), and the dense repeats make the
    induction phase change happen within a CPU-minutes budget (two copies per window were not enough).
    """
    starts = rng.integers(0, len(data) - seq, size=batch)
    windows = np.stack([data[s : s + seq - 1] for s in starts])
    if repeat_fraction > 0:
        chosen = rng.random(batch) < repeat_fraction
        for i in np.flatnonzero(chosen):
            span = rng.choice(PRINTABLE, size=int(rng.integers(5, 61)))
            windows[i] = np.resize(span, seq - 1)
    return torch.from_numpy(np.concatenate([np.full((batch, 1), 256), windows], axis=1))


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def held_out_loss(model, data: np.ndarray, seq: int, n_batches: int = 8, batch: int = 16) -> float:
    rng = np.random.default_rng(12345)
    losses = [model(batches(data, batch, seq, rng), return_type="loss").item() for _ in range(n_batches)]
    return float(np.mean(losses))


@torch.no_grad()
def induction_scores(model, seq_len: int = 50, batch: int = 8, seed: int = 0) -> list[list[float]]:
    """Per-head induction scores ([layer][head]) on seeded repeated random printable-ASCII sequences
    (:func:`lens.head_detectors.induction_scores`); induction heads score near 1."""
    from lens.head_detectors import induction_scores as scores
    from lens.head_detectors import repeated_tokens

    tokens = repeated_tokens(model, seq_len, batch=batch, seed=seed, token_ids=PRINTABLE.tolist())
    return scores(model, tokens).tolist()


def train(name: str, steps: int | None = None, out_dir: Path = WEIGHTS_DIR, log_every: int = 50) -> dict:
    """Train model ``name`` from :data:`SPECS` and write its weights and report to ``out_dir``.

    Deterministic algorithms and a 2-thread pool are switched on for the run and restored afterwards.
    """
    saved = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    try:
        return _train(name, steps, out_dir, log_every)
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.set_num_threads(saved[1])


def _train(name: str, steps: int | None, out_dir: Path, log_every: int) -> dict:
    from safetensors.torch import save_file

    from lens import HookedTransformer, Tokenizer, TransformerConfig

    spec = SPECS[name]
    hp = dict(spec["train"])
    if steps is not None:
        hp["steps"] = steps
    torch.manual_seed(hp["seed"])
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    train_data, held_data, corpus_sha = load_corpus()
    cfg = TransformerConfig(model_name=name, **spec["config"])
    model = HookedTransformer(cfg, tokenizer=Tokenizer.byte_level(), seed=hp["seed"])
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": hp["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=hp["lr"],
        betas=(0.9, 0.98),
    )
    rng = np.random.default_rng(hp["seed"])
    curve, t0 = [], time.time()
    for step in range(hp["steps"]):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, hp["steps"], hp["lr"], hp["warmup"])
        tokens = batches(train_data, hp["batch"], hp["seq"], rng, hp.get("repeat_fraction", 0.0))
        loss = model(tokens, return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % log_every == 0 or step == hp["steps"] - 1:
            curve.append([step, round(loss.item(), 4)])
            print(f"[{name}] step {step:5d}  loss {loss.item():.4f}  {time.time() - t0:6.1f}s", flush=True)
    model.eval()
    report = {
        "name": name,
        "description": spec["description"],
        "config": cfg.to_dict(),
        "train": hp,
        "train_seconds": round(time.time() - t0, 1),
        "loss_curve": curve,
        "final_train_loss": curve[-1][1],
        "held_out_loss": round(held_out_loss(model, held_data, hp["seq"]), 4),
        "induction_scores": [[round(s, 4) for s in layer] for layer in induction_scores(model)],
        "corpus": {
            "files": len(corpus_files()),
            "sha256": corpus_sha,
            "python": platform.python_version(),
            "held_out": f"every {HELD_OUT_EVERY}th file",
        },
        "torch": torch.__version__,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        state.pop("unembed.weight", None)
    weights_path = out_dir / f"{name}.safetensors"
    save_file(state, str(weights_path), metadata={"name": name})
    report["sha256"] = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    (out_dir / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"[{name}] held-out loss {report['held_out_loss']}, weights sha256 {report['sha256'][:16]}…")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=list(SPECS), help=f"models to train (default: {list(SPECS)})")
    parser.add_argument("--steps", type=int, default=None, help="override the number of steps (smoke runs)")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="output directory")
    args = parser.parse_args(argv)
    for name in args.names:
        if name not in SPECS:
            parser.error(f"unknown model {name!r}; choose from {list(SPECS)}")
        train(name, args.steps, args.out)


if __name__ == "__main__":
    main()
