"""Training throughput of ``lens.sae.train`` against a plain hand-written torch loop of the same SAE.

The same math (TopK SAE, summed-squared-error loss, Adam, the parallel decoder-gradient component removed, rows
renormalised) on the same batches, in two settings:

- no store: random activations held in memory (``train`` gets the tensor; the loop slices the same shuffled
  batches);
- a store: ``gelu-4l``'s ``blocks.1.hook_resid_post`` harvested with ``lens.store`` over a random token-id array;
  both read ``store.stream(...)``.

Prints activations/s of each and the ratio (target >= 0.9x). ``python benchmarks/bench_sae_train.py`` (~1 min on
2 CPU cores).
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
import torch

import lens
import lens.sae
import lens.store

D_SAE, K, BATCH, STEPS, LR = 2048, 32, 1024, 60, 3e-4


def hand_loop(batches, d_in, steps):
    """The reference: a TopK SAE trained by hand (what lens.sae.train does, without its bookkeeping)."""
    g = torch.Generator().manual_seed(0)
    w_dec = torch.randn(D_SAE, d_in, generator=g)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    w_enc = torch.nn.Parameter(w_dec.T.clone())
    w_dec = torch.nn.Parameter(w_dec)
    b_enc, b_dec = torch.nn.Parameter(torch.zeros(D_SAE)), torch.nn.Parameter(torch.zeros(d_in))
    opt = torch.optim.Adam([w_enc, b_enc, w_dec, b_dec], lr=LR)
    n = 0
    for step, x in enumerate(batches):
        if step == steps:
            break
        if step == 0:
            with torch.no_grad():
                b_dec.copy_(x.mean(0))
        pre = (x - b_dec) @ w_enc + b_enc
        top = pre.topk(K, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        loss = (acts @ w_dec + b_dec - x).pow(2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        w_dec.grad -= (w_dec.grad * w_dec.data).sum(-1, keepdim=True) * w_dec.data
        opt.step()
        with torch.no_grad():
            w_dec.data /= w_dec.data.norm(dim=-1, keepdim=True)
        n += x.shape[0]
    return n


def timed(fn):
    t = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t)


def tensor_batches(x, seed=0):
    epoch = 0
    while True:
        order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        for b in range(x.shape[0] // BATCH):
            yield x[order[b * BATCH : (b + 1) * BATCH]]
        epoch += 1


def store_batches(store, hook):
    epoch = 0
    while True:
        stream = store.stream(hooks=hook, batch_size=BATCH, shuffle=True, seed=0, rank=0, world_size=1, drop_last=True)
        stream.set_epoch(epoch)
        for b in stream:
            yield b[hook].float()
        epoch += 1


def report(name, lens_rate, hand_rate):
    print(f"{name:<28} lens.sae.train {lens_rate:>10,.0f} act/s   hand loop {hand_rate:>10,.0f} act/s   "
          f"ratio {lens_rate / hand_rate:.2f}x")  # fmt: skip


def main():
    torch.manual_seed(0)
    kw = dict(d_sae=D_SAE, k=K, lr=LR, batch_size=BATCH, progress=False)
    x = torch.randn(BATCH * 16, 512)
    lens.sae.train(x, "h", steps=3, **kw)  # warm-up
    hand = timed(lambda: hand_loop(tensor_batches(x), 512, STEPS))
    ours = timed(lambda: (lens.sae.train(x, "h", steps=STEPS, **kw), STEPS * BATCH)[1])
    report("in-memory activations", ours, hand)

    model = lens.zoo.load("gelu-4l")
    hook = "blocks.1.hook_resid_post"
    ids = np.random.default_rng(0).integers(0, model.cfg.d_vocab, size=129 * 160)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        lens.store.harvest(model, ids, hooks=[hook], context_size=129, batch_size=16, out_dir=tmp, progress=False)
        store = lens.store.open(tmp)
        print(f"(harvested {len(store):,} rows of {hook} in {time.perf_counter() - t:.1f} s)")
        d_in = store[hook].shape[1]
        hand = timed(lambda: hand_loop(store_batches(store, hook), d_in, STEPS))
        ours = timed(lambda: (lens.sae.train(store, hook, steps=STEPS, **kw), STEPS * BATCH)[1])
        report("activation store (gelu-4l)", ours, hand)


if __name__ == "__main__":
    main()
