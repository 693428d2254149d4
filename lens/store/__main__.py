"""``python -m lens.store harvest|info|verify``: the activation store from the shell (also under ``torchrun``).

    python -m lens.store harvest --model gelu-4l --source /usr/lib/python3.11 --out acts \\
        --hooks blocks.1.hook_resid_post blocks.3.hook_mlp_out --context-size 128 --batch-size 16 --max-tokens 1000000
    torchrun --nproc_per_node=2 -m lens.store harvest ...     # the same store, computed by two processes
    python -m lens.store info acts
    python -m lens.store verify acts                            # exit status 1 naming each bad shard
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _load_model(name: str, dtype: str | None):
    import lens

    if name in lens.zoo.list_models():
        return lens.zoo.load(name)
    kw = {} if dtype is None else {"dtype": dtype}
    return lens.HookedTransformer.from_pretrained(name, **kw)


def _init_distributed() -> None:
    """Join the ``torchrun`` job this process was started in (gloo on CPU, nccl with CUDA)."""
    import torch

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lens.store", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    h = sub.add_parser("harvest", help="harvest hook activations into a store (resumes when re-run)")
    h.add_argument("--model", required=True, help="a lens.zoo name, a local directory or a hub name")
    h.add_argument("--source", required=True, nargs="+", help="text files / folders, or a .npy/.safetensors token file")
    h.add_argument("--out", required=True)
    h.add_argument("--hooks", required=True, nargs="+")
    h.add_argument("--context-size", type=int, required=True)
    h.add_argument("--batch-size", type=int, required=True)
    h.add_argument("--max-tokens", type=int)
    h.add_argument("--dtype", help="storage dtype (default: the model's)")
    h.add_argument("--model-dtype", help="dtype to load a checkpoint in (default: the checkpoint's)")
    h.add_argument("--shuffle-seed", type=int)
    h.add_argument("--shard-contexts", type=int)
    h.add_argument("--keep-bos", action="store_true", help="store position 0 (BOS) too")
    h.add_argument("--no-bos", action="store_true", help="do not start contexts with BOS (default: the model's)")
    h.add_argument("--device", help="e.g. cuda:0 (default: the model's; under torchrun with CUDA, cuda:LOCAL_RANK)")
    i = sub.add_parser("info", help="summarise a store")
    i.add_argument("folder")
    v = sub.add_parser("verify", help="re-check every shard's size and SHA-256; exit 1 if any is bad")
    v.add_argument("folder")
    args = parser.parse_args(argv)

    import lens.store

    if args.command == "info":
        print(json.dumps(lens.store.info(args.folder), indent=1, default=str))
        return 0
    if args.command == "verify":
        problems = lens.store.verify(args.folder)
        for p in problems:
            print(f"BAD {p}", file=sys.stderr)
        print(f"{args.folder}: {'OK' if not problems else f'{len(problems)} bad shard(s)'}")
        return 1 if problems else 0

    _init_distributed()
    model = _load_model(args.model, args.model_dtype)
    import torch

    device = args.device
    if device is None and torch.distributed.is_initialized() and torch.cuda.is_available():
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
    if device is not None:
        model = model.to(device)
    source = args.source[0] if len(args.source) == 1 else args.source
    if len(args.source) == 1 and not Path(source).exists():
        raise SystemExit(f"--source {source}: no such file or directory")
    try:
        out = lens.store.harvest(
            model, source, hooks=args.hooks, context_size=args.context_size, batch_size=args.batch_size,
            out_dir=args.out, dtype=args.dtype, max_tokens=args.max_tokens, exclude_bos=not args.keep_bos,
            prepend_bos=False if args.no_bos else None, shuffle_seed=args.shuffle_seed,
            shard_contexts=args.shard_contexts,
        )  # fmt: skip
    except (ValueError, TypeError, OSError) as e:  # bad arguments, a different store in --out, disk errors
        print(f"python -m lens.store harvest: error: {e}", file=sys.stderr)
        return 2
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        summary = lens.store.info(out)
        print(f"{out}: {summary['rows']} rows in {summary['shards']} shard(s), {summary['bytes'] / 1e6:.1f} MB")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
