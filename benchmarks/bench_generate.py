"""Greedy decoding speed of lens's ``generate`` against Hugging Face's (and TransformerLens when installed).

GPT-2-small shape (12 layers, d_model 768, 12 heads, vocab 50257), random weights, fp32 CPU, a 32-token
prompt and 128 greedy tokens (no EOS stop), at batch 1 and batch 8. Reports tokens/s, the ratio to HF
measured in the same run (calls interleaved so background load hits both alike), and the fraction of the
memory-bandwidth limit reached: decode reads every weight once per step, so
``weight bytes per step x steps/s / read bandwidth``, with the read bandwidth measured here by timing
sums of a tensor larger than the last-level cache. Also checks that lens and HF emit the same tokens,
and measures the int8 KV cache (memory and max logit difference vs the fp32 cache, teacher-forced).

Run: ``.venv/bin/python -m benchmarks.bench_generate [--quick]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

PROMPT, NEW = 32, 128


def gpt2_small():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
    return transformers.GPT2LMHeadModel(cfg).eval()


def read_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes/s of streaming reads: best of ``repeats`` sums over a ``gib`` GiB float32 tensor."""
    x = torch.ones(int(gib * 2**30) // 4)
    x.sum()
    best = min(_timed(x.sum) for _ in range(repeats))
    return x.numel() * 4 / best


def weight_bytes_per_step(model) -> int:
    """Bytes of weights one decode step reads: every block and final-norm weight, and the unembedding."""
    params = [p for n, p in model.named_parameters() if n.startswith(("blocks.", "ln_final."))]
    params.append(model.unembed.weight)
    return sum(p.numel() * p.element_size() for p in params)


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call, calls alternating between contenders (after one warm-up each)."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(_timed(fn))
    return {k: statistics.median(v) for k, v in samples.items()}


def transformer_lens_model(hf):
    try:
        from transformer_lens import HookedTransformer as TLModel
    except ImportError:
        return None
    return TLModel.from_pretrained("gpt2", hf_model=hf, device="cpu", default_prepend_bos=False)


@torch.inference_mode()
def int8_cache_report(model, prompt: torch.Tensor, new: int) -> dict:
    """Max |logit difference| of the int8 cache vs the fp32 cache over ``new`` teacher-forced steps."""
    from lens.generation import KVCache

    tokens = model.generate(prompt, new, stop_at_eos=False)
    logits = {}
    for dtype in (None, "int8"):
        cache = KVCache.for_model(model, tokens.shape[0], tokens.shape[1], kv_cache_dtype=dtype)
        steps = [model(tokens[:, : prompt.shape[1]], past_kv_cache=cache)[:, -1]]
        for t in range(prompt.shape[1], tokens.shape[1] - 1):
            steps.append(model(tokens[:, t : t + 1], past_kv_cache=cache)[:, -1])
        logits[dtype] = torch.stack(steps, 1)
        logits[f"{dtype}_bytes"] = cache.nbytes
    diff = (logits["int8"] - logits[None]).abs()
    agree = (logits["int8"].argmax(-1) == logits[None].argmax(-1)).float().mean().item()
    return {
        "max_logit_diff": diff.max().item(),
        "mean_logit_diff": diff.mean().item(),
        "logit_scale": logits[None].abs().max().item(),
        "argmax_agreement": agree,
        "memory_ratio": logits["int8_bytes"] / logits["None_bytes"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="32 new tokens, one timed repeat")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    new, repeats = (32, 1) if args.quick else (NEW, args.repeats)

    from lens.adapters import from_hf_model

    hf = gpt2_small()
    model = from_hf_model(hf).eval()
    tl = transformer_lens_model(hf)
    g = torch.Generator().manual_seed(0)
    prompts = {
        1: torch.randint(0, 50257, (1, PROMPT), generator=g),
        8: torch.randint(0, 50257, (8, PROMPT), generator=g),
    }

    def hf_generate(p: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return hf.generate(
                p, attention_mask=torch.ones_like(p), max_new_tokens=new, do_sample=False,
                eos_token_id=None, pad_token_id=0,
            )  # fmt: skip

    report: dict = {"threads": torch.get_num_threads(), "prompt": PROMPT, "new_tokens": new}
    bw = read_bandwidth()
    report["read_bandwidth_GBps"] = bw / 1e9
    step_bytes = weight_bytes_per_step(model)
    report["weight_bytes_per_step_MB"] = step_bytes / 1e6
    for batch, p in prompts.items():
        fns = {
            "lens": lambda p=p: model.generate(p, new, stop_at_eos=False),
            "hf": lambda p=p: hf_generate(p),
        }
        if tl is not None:
            fns["transformer_lens"] = lambda p=p: tl.generate(
                p, max_new_tokens=new, stop_at_eos=False, do_sample=False, verbose=False
            )
        same = torch.equal(fns["lens"](), fns["hf"]())
        times = interleaved(fns, repeats)
        row = {"same_tokens_as_hf": same}
        for name, sec in times.items():
            tps = batch * new / sec
            row[name] = {
                "tokens_per_s": tps,
                "vs_hf": times["hf"] / sec,
                "bandwidth_fraction": step_bytes * (new / sec) / bw,
            }
        report[f"batch{batch}"] = row
    report["int8_cache"] = int8_cache_report(model, prompts[1], new)

    gb, mb, threads = bw / 1e9, step_bytes / 1e6, report["threads"]
    print(f"read bandwidth {gb:.1f} GB/s, weights read per step {mb:.0f} MB, {threads} threads")
    print("| batch | implementation | tokens/s | vs HF | fraction of bandwidth limit |")
    print("|---|---|---|---|---|")
    for batch in prompts:
        for name, r in report[f"batch{batch}"].items():
            if isinstance(r, dict):
                tps, ratio, frac = r["tokens_per_s"], r["vs_hf"], r["bandwidth_fraction"]
                print(f"| {batch} | {name} | {tps:.1f} | {ratio:.2f}x | {frac:.2f} |")
    q = report["int8_cache"]
    print(
        f"int8 KV cache: {q['memory_ratio']:.3f}x fp32 memory; max |logit diff| {q['max_logit_diff']:.4f} "
        f"(mean {q['mean_logit_diff']:.5f}, logits up to {q['logit_scale']:.1f}), "
        f"argmax agreement {q['argmax_agreement']:.3f}"
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
