"""Show lens doing real interpretability on an embedded trained model, offline, in about a minute.

On the model (default: the embedded 2-layer attention-only model trained on Python's standard library)
the demo (1) scores every head as previous-token / duplicate-token / induction head, (2) shows
in-context learning on a repeated random sequence (loss on the second repeat far below the first),
(3) runs residual-stream activation patching on an induction prompt pair, (4) generates text with the KV
cache, (5) prints a summary and (6) writes an HTML report with the figures plus a reproducibility
manifest. ``--model`` also takes a local checkpoint: a lens zoo directory or a Hugging Face directory.

    lens demo                       # or: python -m lens demo
    lens demo --model gelu-4l --out my-report
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

DEFAULT_MODEL = "attn-only-2l"


class UsageError(Exception):
    """A bad command-line value; ``lens`` reports it as argparse does (usage, message, exit code 2)."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def check_out(out: Path) -> None:
    """Raise :class:`UsageError` unless ``out`` is a directory or can be created as one (nothing is created)."""
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"argument --out: {str(out)!r} exists and is not a directory")
        if not os.access(out, os.W_OK | os.X_OK):
            raise UsageError(f"argument --out: directory {str(out)!r} is not writable")
        return
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"argument --out: cannot create {str(out)!r}: {str(parent)!r} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"argument --out: cannot create {str(out)!r}: {str(parent)!r} is not writable")


def check_generation_length(model, prompt: str, max_new_tokens: int) -> None:
    """Raise :class:`UsageError` when the prompt plus ``max_new_tokens`` exceeds the model's context."""
    n_prompt = int(model.to_tokens(prompt).shape[-1])
    room = model.cfg.n_ctx - n_prompt
    if max_new_tokens > room:
        raise UsageError(
            f"argument --max-new-tokens: {max_new_tokens} is too many for {model.cfg.model_name or 'the model'}: "
            f"its context is {model.cfg.n_ctx} positions and the prompt takes {n_prompt}, so at most {room}"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"embedded model name (see lens.zoo.list_models(); default {DEFAULT_MODEL}) or a local checkpoint "
        "directory (lens zoo format, or Hugging Face format with config.json)",
    )
    parser.add_argument("--out", type=Path, default=Path("lens-report"), help="output directory for the report")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random sequences and sampling")
    parser.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        default=80,
        help="tokens to generate (at least 1; the prompt plus these must fit the model's context)",
    )
    parser.add_argument("--prompt", default="def __init__(self", help="prompt for text generation")
    parser.add_argument("--no-report", action="store_true", help="print the summary only, write no files")


def load_model(source: str):
    """An embedded model by name, or a local checkpoint directory."""
    from lens import HookedTransformer, zoo

    path = Path(source)
    if source in zoo.list_models():
        return zoo.load(source)
    if path.is_dir() and (path / "config.json").exists():
        return HookedTransformer.from_pretrained(path)
    return zoo.load(source)


def induction_prompt_pair(model, seed: int, length: int = 24, prefix: int = 12, token_ids=None):
    """Clean: ``bos + r + r[:prefix]`` (the next token ``r[prefix]`` is predictable by induction);
    corrupted: ``bos + r' + r[:prefix]`` (same length, no earlier copy to copy from).

    ``r`` and ``r'`` are distinct random tokens from ``token_ids`` (default: lowercase letters for a
    byte-level model, else the whole vocabulary). Returns (clean, corrupted, answer token id).
    """
    if token_ids is None:
        byte_level = model.tokenizer is not None and model.tokenizer.is_byte_level
        token_ids = list(b"abcdefghijklmnopqrstuvwxyz") if byte_level else list(range(model.cfg.d_vocab))
    pool = torch.as_tensor(token_ids)
    if len(pool) < length:
        raise ValueError(f"need at least length={length} distinct token ids, got {len(pool)}")
    g = torch.Generator().manual_seed(seed)
    r = pool[torch.randperm(len(pool), generator=g)[:length]]
    r_corrupt = pool[torch.randperm(len(pool), generator=g)[:length]]
    bos_id = None if model.tokenizer is None else model.tokenizer.bos_token_id
    bos = torch.tensor([] if bos_id is None else [bos_id], dtype=torch.long)
    clean = torch.cat([bos, r, r[:prefix]])[None]
    corrupted = torch.cat([bos, r_corrupt, r[:prefix]])[None]
    return clean, corrupted, int(r[prefix])


def run(args: argparse.Namespace) -> int:
    """Run the demo. Bad arguments (``--out`` a file or not creatable, ``--max-new-tokens`` beyond the
    context, a ``--model`` that does not load) raise :class:`UsageError` before any analysis runs."""
    from lens import head_detectors, patching, plot, repro
    from lens.logit_lens import logit_lens

    t0 = time.perf_counter()
    if not args.no_report:
        check_out(args.out)
    try:
        model = load_model(args.model)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise UsageError(f"argument --model: cannot load {args.model!r}: {e}") from e
    check_generation_length(model, args.prompt, args.max_new_tokens)
    torch.manual_seed(args.seed)
    stages = tqdm(total=5, desc="lens demo", unit="step", leave=False)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    stages.update()

    # 1. head detectors on repeated random tokens
    stages.set_description("head detectors")
    byte_level = model.tokenizer is not None and model.tokenizer.is_byte_level
    printable = list(range(32, 127)) if byte_level else None  # the bytes a text-trained byte model has seen
    rep = head_detectors.repeated_tokens(model, seq_len=50, batch=8, seed=args.seed, token_ids=printable)
    with torch.inference_mode():
        _, cache = model.run_with_cache(rep, names_filter=lambda n: n.endswith("hook_pattern"))
        scores = head_detectors.detect_heads(model, rep, cache=cache)
    induction = scores["induction"]
    best = divmod(int(induction.argmax()), n_heads)
    stages.update()

    # 2. in-context learning: loss on the first vs second repeat
    stages.set_description("in-context learning")
    with torch.inference_mode():
        per_token = model(rep, return_type="loss", loss_per_token=True)  # [batch, pos - 1]
    first, second = per_token[:, 1:50].mean().item(), per_token[:, 51:].mean().item()
    stages.update()

    # 3. residual-stream activation patching on an induction prompt pair
    stages.set_description("activation patching")
    clean, corrupted, answer = induction_prompt_pair(model, args.seed)
    with torch.inference_mode():
        clean_logits, clean_cache = model.run_with_cache(clean)
        corrupted_logits = model(corrupted)
    clean_value = clean_logits[0, -1, answer].item()
    corrupted_value = corrupted_logits[0, -1, answer].item()

    def recovered(logits: torch.Tensor) -> torch.Tensor:  # 1 = clean behaviour, 0 = corrupted
        return (logits[:, -1, answer] - corrupted_value) / (clean_value - corrupted_value)

    result = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, recovered, labelled=True)
    stages.update()

    # 4. generation with the KV cache
    stages.set_description("generation")
    sample = model.generate(
        args.prompt, max_new_tokens=args.max_new_tokens, do_sample=True, temperature=0.7, top_p=0.95,
        seed=args.seed, return_type="str",
    )  # fmt: skip
    stages.update()
    stages.close()

    # 5. summary
    print(f"model: {model}")
    print("\ninduction score per head (attention to the token after the previous copy; 1 = perfect):")
    header = "layer " + " ".join(f"  h{h:<3d}" for h in range(n_heads))
    print(header)
    for layer in range(n_layers):
        print(f"{layer:5d} " + " ".join(f"{induction[layer, h]:6.2f}" for h in range(n_heads)))
    prev = divmod(int(scores["previous_token"].argmax()), n_heads)
    print(f"strongest induction head: L{best[0]}H{best[1]} (score {induction[best].item():.2f}); "
          f"strongest previous-token head: L{prev[0]}H{prev[1]}")  # fmt: skip
    print(f"\nin-context learning on 8 repeated random sequences of 50 bytes: loss {first:.2f} nats/token on "
          f"the first repeat, {second:.2f} on the second ({first / max(second, 1e-9):.1f}x lower)")  # fmt: skip
    vals = result.values
    top = divmod(int(vals.argmax()), vals.shape[1])
    answer_str = model.to_string(torch.tensor([answer]))
    print(f"\nactivation patching (resid_pre, {n_layers} layers x {vals.shape[1]} positions, batched): "
          f"clean logit of {answer_str!r} = {clean_value:.2f}, corrupted = {corrupted_value:.2f}; "
          f"the most restoring site is layer {top[0]} position {top[1]} "
          f"({result.labels['pos'][top[1]]!r}, {vals[top].item():.2f} recovered)")  # fmt: skip
    print(f"\ngenerated (KV cache, T=0.7, top-p 0.95, seed {args.seed}):\n{sample}")

    # 6. report
    if not args.no_report:
        str_rep = model.to_str_tokens(rep[0])
        figs = [
            plot.imshow(induction, x=[f"H{h}" for h in range(n_heads)], y=[f"L{i}" for i in range(n_layers)],
                        title="Induction score per head", zmid=None, x_title="Head", y_title="Layer"),
            plot.attention_patterns(cache["pattern", best[0]][0], str_rep, heads=[best[1]],
                                    title=f"Attention of L{best[0]}H{best[1]} on a repeated random sequence"),
            plot.line(per_token.mean(0), title="Loss per position (mean of 8 repeated sequences)",
                      x_title="Position", y_title="Loss (nats)"),
            result.figure(title="Residual-stream activation patching (fraction of clean logit recovered)"),
            logit_lens(model, clean, top_k=3).figure(title="Logit lens on the clean induction prompt"),
        ]  # fmt: skip
        args.out.mkdir(parents=True, exist_ok=True)
        report = plot.figures_to_html(figs, args.out / "report.html", title=f"lens demo: {model.cfg.model_name}")
        manifest = repro.write_manifest(
            args.out, model=model, seeds=args.seed, hooks=["blocks.*.attn.hook_pattern", "blocks.*.hook_resid_pre"]
        )
        print(f"\nreport: {report}\nmanifest: {manifest}")
    print(f"done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)  # timing: not part of the reproducible output
    return 0
