"""Where a batch-1 decode step's time goes: lens's step vs a hand-written lean step vs the weight floor.

Three ways to take one greedy decode step of the GPT-2-small shape (fp32 CPU, KV cache of 32 + N tokens):

- ``lens``: ``model.decode_step`` (what ``generate`` runs: the ordinary forward, modules and hook points,
  keeping the last position's logits; on a lens without it, ``model(token, past_kv_cache=cache)``);
- ``lean``: the same arithmetic hand-written in one function for this architecture (layer norm, one
  ``addmm`` per projection, SDPA over a preallocated cache, in-place residual adds), no modules or hooks;
- ``floor``: only the weight products (:func:`benchmarks.bench_generate.weight_floor`).

Both the lean step and the floor read the model's parameters as plain tensors in their stored layout
(the unembedding is the tied embedding matrix itself).

``lean - floor`` is the unavoidable non-GEMV work; ``lens - lean`` is lens's Python overhead per step,
which is what separates lens from the decode target (docs/benchmarks.md, "Generation").
The lean step is a measuring stick for GPT-2 only, checked against lens's logits before timing.

Run: ``.venv/bin/python -m benchmarks.decode_overhead [--steps 64] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from benchmarks._common import gpt2_small
from benchmarks.bench_generate import weight_floor


def lean_gpt2_step(model, max_len: int):
    """A hook-free decode step for a GPT-2-shaped lens model: ``step(token, pos) -> logits [1, vocab]``."""
    cfg = model.cfg
    h, dh, d = cfg.n_heads, cfg.d_head, cfg.d_model
    keys = torch.zeros(cfg.n_layers, h, max_len, dh)
    values = torch.zeros(cfg.n_layers, h, max_len, dh)
    layers = [
        (b.ln1.w, b.ln1.b, b.attn.qkv_weight.t(), b.attn.qkv_bias, b.attn.o_weight.t(), b.attn.o_bias,
         b.ln2.w, b.ln2.b, b.mlp.in_weight.t(), b.mlp.in_bias, b.mlp.out_weight.t(), b.mlp.out_bias)
        for b in model.blocks
    ]  # fmt: skip
    w_e, w_pos = model.embed.weight, model.pos_embed.weight
    w_u = model.unembed.weight  # [d_vocab, d_model] (tied to the embedding) or [d_model, d_vocab]
    w_u = w_u if w_u.shape[-1] == cfg.d_vocab else w_u.t()
    ln_f, eps, scale = model.ln_final, cfg.eps, model.blocks[0].attn.scale

    def step(token: int, pos: int) -> torch.Tensor:
        x = (w_e[token] + w_pos[pos]).view(1, d)
        for i, (w1, b1, wqkv, bqkv, wo, bo, w2, b2, win, bin_, wout, bout) in enumerate(layers):
            qkv = torch.addmm(bqkv, F.layer_norm(x, (d,), w1, b1, eps), wqkv)
            q, k, v = qkv.view(3, h, dh).unbind(0)
            keys[i, :, pos], values[i, :, pos] = k, v
            k_all, v_all = keys[None, i, :, : pos + 1], values[None, i, :, : pos + 1]
            z = F.scaled_dot_product_attention(q.view(1, h, 1, dh), k_all, v_all, scale=scale)
            x = torch.addmm(bo, z.view(1, d), wo).add_(x)
            mid = F.gelu(torch.addmm(bin_, F.layer_norm(x, (d,), w2, b2, eps), win), approximate="tanh")
            x = torch.addmm(bout, mid, wout).add_(x)
        return F.layer_norm(x, (d,), ln_f.w, ln_f.b, eps) @ w_u

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from benchmarks._common import from_hf_model
    from lens.generation import KVCache

    model = from_hf_model(gpt2_small())
    decode = getattr(model, "decode_step", None)
    if decode is None:  # a lens without decode_step: the ordinary forward with a cache
        decode = lambda t, cache: model(t, past_kv_cache=cache)[:, -1]  # noqa: E731
    prompt = torch.randint(0, 50256, (1, 32), generator=torch.Generator().manual_seed(0))
    n, p_len = args.steps, prompt.shape[1]

    def lens_steps() -> float:
        cache = KVCache.for_model(model, 1, p_len + n + 1)
        decode(prompt, cache)
        tok = torch.tensor([[5]])
        t = time.perf_counter()
        for _ in range(n):
            decode(tok, cache)
        return (time.perf_counter() - t) / n

    def lean_steps() -> float:
        step = lean_gpt2_step(model, p_len + n + 1)
        for i, tok in enumerate(prompt[0].tolist()):  # the prompt, one token at a time
            step(tok, i)
        t = time.perf_counter()
        for i in range(n):
            step(5, p_len + i)
        return (time.perf_counter() - t) / n

    floor_fn = weight_floor(model, 1, n)

    def floor() -> float:
        t = time.perf_counter()
        floor_fn()
        return (time.perf_counter() - t) / n

    with torch.inference_mode():  # the lean step must compute lens's numbers
        step = lean_gpt2_step(model, 8)
        for i, tok in enumerate(prompt[0, :8].tolist()):
            lean_logits = step(tok, i)
        ref = model(prompt[:, :8])[0, -1]
        diff = (lean_logits[0] - ref).abs().max().item()
        assert diff < 1e-3, f"lean step disagrees with lens by {diff}"
        times: dict[str, list[float]] = {"lens": [], "lean": [], "floor": []}
        for _ in range(args.repeats):
            times["lens"].append(lens_steps())
            times["lean"].append(lean_steps())
            times["floor"].append(floor())
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(
        f"GPT-2-small shape, batch 1, {torch.get_num_threads()} threads, ms per decode step (median of {args.repeats})"
    )
    for k, v in med.items():
        print(f"  {k:6s} {v:6.2f} ms   ({v / med['floor']:.2f}x the weight floor)")
    print(f"  lens Python overhead vs the lean step: {med['lens'] - med['lean']:.2f} ms/step; "
          f"non-GEMV work in the lean step: {med['lean'] - med['floor']:.2f} ms/step")  # fmt: skip


if __name__ == "__main__":
    main()
