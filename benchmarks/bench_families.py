"""Forward speed of lens against Hugging Face on the shapes of the #13 families (same weights, one run).

- **Gemma-2-shaped**: 6 layers, d_model 576, 8 heads over 4 kv heads of 64, d_mlp 2304, vocab 8192,
  alternating local (window 256) and global layers, attention soft cap 50 and final soft cap 30,
  ``query_pre_attn_scalar`` 64, sandwich norms; batch 4 x 512 tokens. Both sides run explicit attention
  (Hugging Face's ``eager``: its SDPA path cannot soft-cap; lens's capped layers likewise).
- **Qwen3-shaped**: the same size with q/k norms, full attention, Hugging Face ``sdpa``.
- **Mixtral-shaped**: the same attention with a mixture-of-experts MLP (top-2 of 8 experts of width 1152),
  Hugging Face ``sdpa``.

Random weights (``tests``-style O(1) scale is not needed for timing), fp32 CPU; lens converts the HF model.
Reports median seconds of interleaved calls and lens/HF; max |logit difference| is checked every run.

Run: ``.venv/bin/python -m benchmarks.bench_families [--quick] [--repeats N]``
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks._common import from_hf_model, interleaved_times

SHAPE = dict(
    num_hidden_layers=6, hidden_size=576, num_attention_heads=8, num_key_value_heads=4, head_dim=64,
    intermediate_size=2304, vocab_size=8192, max_position_embeddings=8192,
)  # fmt: skip


def gemma2_shaped():
    import transformers

    cfg = transformers.Gemma2Config(
        **SHAPE, sliding_window=256, layer_types=["sliding_attention", "full_attention"] * 3,
        query_pre_attn_scalar=64, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
        attn_implementation="eager",
    )  # fmt: skip
    return transformers.Gemma2ForCausalLM(cfg)


def qwen3_shaped():
    import transformers

    return transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**SHAPE, attn_implementation="sdpa"))


def mixtral_shaped():
    import transformers

    cfg = transformers.MixtralConfig(
        **{**SHAPE, "intermediate_size": 1152}, num_local_experts=8, num_experts_per_tok=2,
        attn_implementation="sdpa",
    )  # fmt: skip
    return transformers.MixtralForCausalLM(cfg)


MODELS = {"gemma2": gemma2_shaped, "qwen3": qwen3_shaped, "mixtral": mixtral_shaped}


def bench(name: str, batch: int, seq: int, repeats: int) -> dict:
    torch.manual_seed(0)
    hf = MODELS[name]().eval()
    model = from_hf_model(hf).eval()
    tokens = torch.randint(0, SHAPE["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (hf(tokens).logits - model(tokens)).abs().max().item()

        def run_hf():
            return hf(tokens).logits

        def run_lens():
            return model(tokens)

        times = interleaved_times({"hf": run_hf, "lens": run_lens}, repeats)
    return {"model": name, "batch": batch, "seq": seq, **times, "lens_over_hf": times["lens"] / times["hf"],
            "max_abs_logit_diff": diff}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1 x 128, 2 repeats (smoke test)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch, seq, repeats = (1, 128, 2) if args.quick else (4, 512, args.repeats)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {batch} x {seq}, {repeats} repeats")
    results = []
    for name in MODELS:
        results.append(bench(name, batch, seq, repeats))
        print_row(results[-1])
    print(json.dumps(results))


def print_row(r: dict) -> None:
    print(
        f"  {r['model']:7s} HF {1e3 * r['hf']:8.1f} ms   lens {1e3 * r['lens']:8.1f} ms   "
        f"lens/HF = {r['lens_over_hf']:.3f}   max |logit diff| {r['max_abs_logit_diff']:.2e}"
    )


if __name__ == "__main__":
    main()
