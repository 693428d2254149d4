"""The embedded models: their architectures and training recipes (data, not code paths).

Each entry is trained by ``python -m lens.zoo.train NAME`` on the Python standard library's own source
(byte-level tokens) and shipped as ``weights/NAME.safetensors`` + ``weights/NAME.json``.
"""

from __future__ import annotations

from typing import Any

COMMON: dict[str, Any] = dict(d_vocab=259, n_ctx=256, default_prepend_bos=True, act_fn="gelu_new")

SPECS: dict[str, dict[str, Any]] = {
    "attn-only-2l": {
        "description": "2-layer attention-only transformer (4 heads/layer, rotary): forms induction heads",
        "config": dict(
            COMMON, n_layers=2, d_model=128, n_heads=4, attn_only=True, normalization="LN", positional="rotary"
        ),
        # repeat_fraction: half the windows are a random span tiled across the window (see train.batches),
        # which brings the induction phase change within the CPU budget.
        "train": dict(
            steps=3000, batch=16, seq=256, lr=1e-3, warmup=200, weight_decay=0.01, seed=0, repeat_fraction=0.5
        ),
    },
    "gelu-4l": {
        "description": "4-layer transformer with GELU MLPs (d_model 128, d_mlp 512)",
        "config": dict(COMMON, n_layers=4, d_model=128, n_heads=4, d_mlp=512, normalization="LN"),
        "train": dict(steps=900, batch=16, seq=128, lr=2e-3, warmup=100, weight_decay=0.01, seed=0),
    },
}


# Sparse autoencoders trained on the embedded models (``python -m lens.zoo.train_sae NAME``), shipped as
# ``saes/NAME/`` in SAELens's format (cfg.json + sae_weights.safetensors) beside ``saes/NAME/zoo.json`` (report).
SAE_SPECS: dict[str, dict[str, Any]] = {
    "gelu-4l-resid1-topk16": {
        "description": "TopK SAE (k=16, 1024 latents, 8x) on gelu-4l's residual stream after block 1",
        "model": "gelu-4l",
        "hook_name": "blocks.1.hook_resid_post",
        "train": dict(
            d_sae=1024,
            architecture="topk",
            k=16,
            lr=1e-3,
            steps=2000,
            batch_size=1024,
            seed=0,
            context_size=128,
            model_batch_size=32,
            dead_after_tokens=250_000,
        ),
        # held-out evaluation: this many 128-byte contexts of the held-out files (BOS + 127 bytes)
        "eval_contexts": 256,
    },
}
