"""Peak memory of ``HookedTransformer.from_pretrained`` relative to the model's own size.

Writes a ~500 MB random Llama-shaped checkpoint (config.json + model.safetensors, streamed tensor by
tensor, no Hugging Face model instantiated), then, in a fresh subprocess per case, measures the rise
of the resident high-water mark (``VmHWM``, reset via ``/proc/self/clear_refs`` after the imports;
if the reset is refused the baseline is subtracted instead) while loading it, and prints
``peak_increase / model_bytes`` (target <= 1.3). The checkpoint is deleted afterwards.

Each case runs in ``--repeats`` fresh processes (median reported): the high-water mark moves by a few
percent between runs (allocator and thread-pool timing). Also loads the same file as bfloat16, where
every tensor is converted on the way in.

Run: ``.venv/bin/python -m benchmarks.bench_loading [--size-mb 500] [--repeats 3] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

D_MODEL, N_HEADS, N_KV, D_MLP, VOCAB = 1024, 16, 4, 2816, 16000


def _shapes(n_layers: int) -> dict[str, tuple[int, ...]]:
    dh = D_MODEL // N_HEADS
    shapes = {"model.embed_tokens.weight": (VOCAB, D_MODEL)}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "input_layernorm.weight": (D_MODEL,),
                p + "self_attn.q_proj.weight": (N_HEADS * dh, D_MODEL),
                p + "self_attn.k_proj.weight": (N_KV * dh, D_MODEL),
                p + "self_attn.v_proj.weight": (N_KV * dh, D_MODEL),
                p + "self_attn.o_proj.weight": (D_MODEL, N_HEADS * dh),
                p + "post_attention_layernorm.weight": (D_MODEL,),
                p + "mlp.gate_proj.weight": (D_MLP, D_MODEL),
                p + "mlp.up_proj.weight": (D_MLP, D_MODEL),
                p + "mlp.down_proj.weight": (D_MODEL, D_MLP),
            }
        )
    shapes["model.norm.weight"] = (D_MODEL,)
    shapes["lm_head.weight"] = (VOCAB, D_MODEL)
    return shapes


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def write_checkpoint(directory: Path, size_mb: float) -> int:
    """A Llama-shaped fp32 checkpoint of about ``size_mb`` MB; returns its number of parameters."""
    per_layer = sum(_numel(s) for s in _shapes(1).values()) - sum(_numel(s) for s in _shapes(0).values())
    fixed = sum(_numel(s) for s in _shapes(0).values())
    n_layers = max(1, round((size_mb * 1e6 / 4 - fixed) / per_layer))
    shapes = _shapes(n_layers)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        nbytes = 4 * _numel(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    gen = torch.Generator().manual_seed(0)
    with open(directory / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for shape in shapes.values():  # one tensor in memory at a time
            t = torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=gen) * 0.02
            f.write(t.numpy().tobytes())
    config = dict(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        hidden_size=D_MODEL,
        num_attention_heads=N_HEADS,
        num_key_value_heads=N_KV,
        intermediate_size=D_MLP,
        num_hidden_layers=n_layers,
        vocab_size=VOCAB,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )
    (directory / "config.json").write_text(json.dumps(config))
    return sum(_numel(s) for s in shapes.values())


def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def measure(directory: str, dtype: str) -> dict:
    """In this (fresh) process: peak resident increase while loading ``directory``."""
    import safetensors  # noqa: F401  (every import happens before the baseline)

    import lens.loading  # noqa: F401
    from lens import HookedTransformer

    torch.ones(1 << 22).to(torch.bfloat16).float().sum()  # start torch's thread pool: a one-time cost
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    baseline = _status_kib("VmRSS") * 1024
    hwm_reset = _status_kib("VmHWM") * 1024 - baseline < 1 << 20
    t0 = time.perf_counter()
    model = HookedTransformer.from_pretrained(directory, dtype=dtype)
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM") * 1024 - baseline
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    model_bytes += sum(b.numel() * b.element_size() for b in model.buffers())
    return dict(
        dtype=dtype,
        model_bytes=model_bytes,
        peak_increase=peak,
        ratio=round(peak / model_bytes, 3),
        seconds=round(seconds, 2),
        hwm_reset=hwm_reset,
    )


def _measure_in_subprocess(directory: Path, dtype: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_loading", "--measure", str(directory), "--dtype", dtype]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=500.0)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per case (median reported)")
    parser.add_argument("--keep", help="write the checkpoint here and keep it")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.dtype)))
        return

    directory = Path(args.keep or tempfile.mkdtemp(prefix="lens-bench-loading-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        n_params = write_checkpoint(directory, args.size_mb)
        file_mb = (directory / "model.safetensors").stat().st_size / 1e6
        print(f"checkpoint: {n_params / 1e6:.1f}M params, {file_mb:.0f} MB fp32 safetensors (Llama-shaped)")
        for dtype in ("float32", "bfloat16"):
            runs = [_measure_in_subprocess(directory, dtype) for _ in range(args.repeats)]
            ratios = sorted(r["ratio"] for r in runs)
            r = sorted(runs, key=lambda r: r["ratio"])[len(runs) // 2]  # the median run
            print(
                f"load as {dtype:8s}: model {r['model_bytes'] / 1e6:.0f} MB, peak RSS increase "
                f"{r['peak_increase'] / 1e6:.0f} MB, ratio {r['ratio']:.3f} (median of {len(runs)}; "
                f"range {ratios[0]:.3f}-{ratios[-1]:.3f}; target <= 1.3), load {r['seconds']:.2f} s"
                + ("" if r["hwm_reset"] else " [VmHWM reset refused: baseline subtracted]")
            )
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
