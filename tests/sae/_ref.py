"""A hand-written reference SAE (SAELens's inference math), written independently of lens.sae.modules."""

from __future__ import annotations

import math

import torch


def ref_forward(p: dict, x: torch.Tensor, arch: str, k=None, apply_b_dec=True, norm="none", scale=None):
    """(feature acts, reconstruction) of parameters ``p`` (W_enc, b_enc, W_dec, b_dec, threshold)."""
    x = x.double()
    p = {n: t.double() for n, t in p.items()}
    if norm == "expected_average_only_in":
        xin, undo = x * scale, lambda y: y / scale
    elif norm == "constant_norm_rescale":
        c = math.sqrt(x.shape[-1]) / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        xin, undo = x * c, lambda y: y / c
    elif norm == "layer_norm":
        mu = x.mean(-1, keepdim=True)
        sd = (x - mu).std(-1, keepdim=True)
        xin, undo = (x - mu) / (sd + 1e-5), lambda y: y * sd + mu
    else:
        xin, undo = x, lambda y: y
    if apply_b_dec:
        xin = xin - p["b_dec"]
    pre = torch.einsum("...i,is->...s", xin, p["W_enc"]) + p["b_enc"]
    if arch == "standard":
        f = pre.clamp(min=0)
    elif arch == "topk":
        f = torch.zeros_like(pre)
        flat, fflat = pre.reshape(-1, pre.shape[-1]), f.view(-1, pre.shape[-1])
        for r in range(flat.shape[0]):
            order = sorted(range(flat.shape[1]), key=lambda j: -flat[r, j].item())[:k]
            for j in order:
                fflat[r, j] = max(flat[r, j].item(), 0.0)
    else:
        f = torch.where(pre > p["threshold"], pre, torch.zeros_like(pre)).clamp(min=0)
    recons = undo(torch.einsum("...s,so->...o", f, p["W_dec"]) + p["b_dec"])
    return f, recons


def random_params(d_in, d_sae, jumprelu=False, seed=0, d_out=None):
    g = torch.Generator().manual_seed(seed)
    d_out = d_in if d_out is None else d_out
    p = {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / math.sqrt(d_in),
        "b_enc": torch.randn(d_sae, generator=g) * 0.3,
        "W_dec": torch.randn(d_sae, d_out, generator=g) / math.sqrt(d_sae),
        "b_dec": torch.randn(d_out, generator=g) * 0.5,
    }
    if jumprelu:
        p["threshold"] = torch.rand(d_sae, generator=g) * 0.5
    return p


def set_params(sae, p):
    with torch.no_grad():
        for n, t in p.items():
            getattr(sae, n).copy_(t)
    return sae
