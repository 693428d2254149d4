"""Run lens's main job on an embedded model and print what it finds.

Builds the embedded default model (a small transformer with lens's byte-level tokenizer), runs a
prompt through ``run_with_cache`` and prints a summary of every activation it recorded: the hook names
and shapes, the attention pattern of each head on the last token, and the model's top next-token
predictions.
"""

from __future__ import annotations

import argparse
import time

import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", default="The quick brown fox jumps over the lazy dog. The quick brown", help="text")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights")


def default_model(seed: int = 0):
    """The embedded default: a 2-layer, 4-head byte-level model with random (seeded) weights."""
    from lens import HookedTransformer, Tokenizer, TransformerConfig

    cfg = TransformerConfig(
        n_layers=2, d_model=64, n_heads=4, d_vocab=259, n_ctx=256, model_name="lens-random-2l", act_fn="gelu_new"
    )
    return HookedTransformer(cfg, tokenizer=Tokenizer.byte_level(), seed=seed).eval()


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    model = default_model(args.seed)
    print(f"model: {model}")
    with torch.inference_mode():
        logits, cache = model.run_with_cache(args.prompt)
    tokens = model.to_str_tokens(args.prompt)
    print(f"prompt: {args.prompt!r} -> {len(tokens)} tokens")
    print(f"cached {len(cache)} activations, e.g.:")
    for name in ("hook_embed", "blocks.0.attn.hook_pattern", "blocks.1.mlp.hook_post", "ln_final.hook_normalized"):
        print(f"  {name:32s} {tuple(cache[name].shape)}")
    print("attention of the last token (max weight, key token) per head:")
    for layer in range(model.cfg.n_layers):
        pattern = cache["pattern", layer][0, :, -1]
        best = pattern.argmax(-1)
        cells = [f"h{h}: {pattern[h, best[h]]:.2f} {tokens[best[h]]!r}" for h in range(model.cfg.n_heads)]
        print(f"  layer {layer}: " + ", ".join(cells))
    probs = logits[0, -1].softmax(-1)
    top = probs.topk(5)
    preds = ", ".join(f"{model.to_string(i.unsqueeze(0))!r} {p:.3f}" for p, i in zip(top.values, top.indices))
    print(f"top next-token predictions: {preds}")
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0
