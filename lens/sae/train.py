"""Train a sparse autoencoder on one hook's activations: ``lens.sae.train(source, hook_name, d_sae, ...) -> SAE``.

Sources (``source``):

- an activation store (a :class:`lens.store.Store`, or the folder of one): batches come from
  ``store.stream(hooks=hook_name, batch_size=..., shuffle=True, seed=seed, drop_last=True)``, epoch after epoch
  (``set_epoch``), so nothing but the stream's shuffle buffer is held in memory;
- ``model=`` plus a text or token source (a list of strings, text files or a folder, a token-id array: whatever
  :meth:`lens.store.TokenSource.from_any` reads): contexts are packed by ``TokenSource``, run through the model in
  batches of ``model_batch_size`` with ``run_with_cache(names_filter=[hook_name], stop_at_layer=L + 1)``, and the
  activations of ``buffer_contexts`` contexts at a time are shuffled (seeded) and cut into batches; the corpus is
  never held, only that buffer;
- a floating-point tensor ``[rows, d_in]`` of activations (no model): shuffled each epoch with a seeded generator.

Training (SAELens's / Gao et al.'s recipe): Adam (``betas=(0.9, 0.999)``) at a constant ``lr``; the loss is the
squared error summed over the features and averaged over the batch, plus for ``"standard"``
``l1_coefficient * mean(sum_i f_i * ||W_dec[i]||)`` and for ``"topk"`` the auxiliary loss on dead latents
(``aux_coefficient * min(n_dead / aux_k, 1) * mean ||e - ê||^2``, where ``e = x - x̂`` (detached) and ``ê`` is
decoded, without ``b_dec``, from the ``min(aux_k, n_dead)`` largest pre-activations of the dead latents after a
ReLU; ``aux_k`` defaults to ``d_in // 2``, ``aux_coefficient`` to 1/32, as Gao et al.). Before each step the
gradient component of ``W_dec`` parallel to its rows is removed; after it the rows are renormalised to unit
norm. ``b_dec`` starts at the mean (``b_dec_init="mean"``) or an approximate geometric median (Weiszfeld,
``"geometric_median"``) of the first batch, or zero (``"zeros"``). A latent is dead once it has not fired for
``dead_after_tokens`` training tokens (``tokens_since_fired`` is kept per latent).

Checkpoints (``checkpoint_dir``, every ``checkpoint_every`` steps and at the end): ``step-000123/`` holds the SAE
in SAELens's format (``sae.save``: ``cfg.json`` + ``sae_weights.safetensors``) and ``trainer_state.pt``
(optimizer state, step, stream position (epoch, batch), ``tokens_since_fired``, the run's arguments). Each is
written to a temporary folder, every file ``fsync``ed, then renamed into place and the parent ``fsync``ed, so a
killed run leaves complete checkpoints only. Running the same call again resumes from the newest one; on CPU the
result equals an uninterrupted run bit for bit (``steps`` may be raised to train further; other arguments that
differ are refused, naming them).

Bad arguments raise ``ValueError`` naming the value before any data is read.

>>> sae = lens.sae.train("acts", "blocks.1.hook_resid_post", d_sae=4096, k=32, steps=2000)   # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lens.sae.config import SAEConfig
from lens.sae.modules import SAE, WEIGHTS_FILE

STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
TRAINABLE = ("standard", "topk")
_DTYPES = ("float32", "float64", "float16", "bfloat16")
# arguments that may change between a run and its resumption
_RESUMABLE_CHANGES = {"steps", "progress", "checkpoint_every", "keep_checkpoints", "log_every"}


# -- validation ------------------------------------------------------------------------------------
def _int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}={value!r} must be an int >= {low}")


def _nonneg(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={value!r} must be a finite number >= 0")


def _stop_layer(hook_name: str) -> int | None:
    m = _BLOCK.match(hook_name)
    return int(m.group(1)) + 1 if m else None


# -- sources: each yields ((epoch, batches done in that epoch), x [batch_size, d_in]) from a position ----------
class _Batches:
    d_in: int | None = None
    describe: dict[str, Any] = {}

    def epoch(self, epoch: int, skip: int) -> Iterator[torch.Tensor]:
        raise NotImplementedError

    def iterate(self, pos: tuple[int, int]) -> Iterator[tuple[tuple[int, int], torch.Tensor]]:
        epoch, skip = pos
        while True:
            done = skip
            for x in self.epoch(epoch, skip):
                done += 1
                yield (epoch, done), x
            if done == 0:
                raise ValueError(f"the source {self.describe} gives no full batch of {self.batch_size} rows")
            epoch, skip = epoch + 1, 0


class _TensorBatches(_Batches):
    def __init__(self, acts: torch.Tensor, batch_size: int, seed: int):
        if acts.ndim != 2 or not acts.is_floating_point():
            raise ValueError(f"an activation tensor source must be floating point [rows, d_in], got {acts.dtype} "
                             f"{tuple(acts.shape)}")  # fmt: skip
        if acts.shape[0] < batch_size:
            raise ValueError(f"batch_size={batch_size} exceeds the {acts.shape[0]} rows of the activation tensor")
        self.acts, self.batch_size, self.seed, self.d_in = acts, batch_size, seed, acts.shape[1]
        self.describe = {"kind": "tensor", "shape": list(acts.shape), "dtype": str(acts.dtype)}

    def epoch(self, epoch, skip):
        order = torch.randperm(self.acts.shape[0], generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
        for b in range(skip, self.acts.shape[0] // self.batch_size):
            yield self.acts[order[b * self.batch_size : (b + 1) * self.batch_size]]


class _StoreBatches(_Batches):
    def __init__(self, store: Any, hook_name: str, batch_size: int, seed: int):
        self.store, self.hook, self.batch_size, self.seed = store, hook_name, batch_size, seed
        shape = tuple(store[hook_name].shape[1:])
        if len(shape) != 1:
            raise ValueError(f"hook {hook_name!r} has rows of shape {shape} in the store; an SAE reads 1-d rows")
        if len(store) < batch_size:
            raise ValueError(f"batch_size={batch_size} exceeds the {len(store)} rows of the store")
        self.d_in = shape[0]
        self.describe = {"kind": "store", "folder": str(getattr(store, "folder", "")), "rows": len(store)}

    def epoch(self, epoch, skip):
        stream = self.store.stream(hooks=self.hook, batch_size=self.batch_size, shuffle=True, seed=self.seed,
                                   rank=0, world_size=1, drop_last=True)  # fmt: skip
        stream.set_epoch(epoch)
        for i, batch in enumerate(stream):
            if i >= skip:
                yield batch[self.hook]


class _ModelBatches(_Batches):
    def __init__(self, model, tokens, hook_name, batch_size, seed, model_batch_size, buffer_contexts, exclude_bos):
        self.model, self.tokens, self.hook, self.batch_size, self.seed = model, tokens, hook_name, batch_size, seed
        self.model_batch_size, self.stop = model_batch_size, _stop_layer(hook_name)
        self.drop_first = exclude_bos and tokens.prepend_bos
        kept = tokens.context_size - (1 if self.drop_first else 0)
        self.kept = kept
        self.buffer = buffer_contexts or max(1, math.ceil(8 * batch_size / kept))
        self.describe = {"kind": "model", "model": getattr(model.cfg, "model_name", None), **tokens.describe}

    def _acts(self, contexts: list) -> torch.Tensor:
        out = []
        for s in range(0, len(contexts), self.model_batch_size):
            ids = torch.from_numpy(np.stack(contexts[s : s + self.model_batch_size]))
            with torch.no_grad():
                _, cache = self.model.run_with_cache(ids, names_filter=[self.hook], stop_at_layer=self.stop)
            a = cache[self.hook]
            if self.drop_first:
                a = a[:, 1:]
            out.append(a.reshape(-1, a.shape[-1]))
        return torch.cat(out)

    def epoch(self, epoch, skip):
        chunk: list = []
        number = 0

        def flush(chunk, number, skip):
            n = len(chunk) * self.kept // self.batch_size
            if skip >= n:
                return skip - n, iter(())
            acts = self._acts(chunk)
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 7919 + number)
            order = torch.randperm(acts.shape[0], generator=gen)
            return 0, (acts[order[b * self.batch_size : (b + 1) * self.batch_size]] for b in range(skip, n))

        for _, ctx in self.tokens.contexts():
            chunk.append(ctx)
            if len(chunk) == self.buffer:
                skip, batches = flush(chunk, number, skip)
                yield from batches
                chunk, number = [], number + 1
        if chunk:
            skip, batches = flush(chunk, number, skip)
            yield from batches


def _open_source(source, hook_name, batch_size, seed, model, context_size, prepend_bos, model_batch_size,
                 buffer_contexts, exclude_bos) -> _Batches:  # fmt: skip
    if model is not None:
        if hook_name not in model.hook_dict:
            raise ValueError(f"hook_name={hook_name!r} is not a hook of the model (model.hook_dict)")
        from lens.store.sources import TokenSource

        bos = model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
        _int("context_size", context_size, 2)
        tokens = TokenSource.from_any(source, model.tokenizer, context_size, bos)
        return _ModelBatches(model, tokens, hook_name, batch_size, seed, model_batch_size, buffer_contexts,
                             exclude_bos)  # fmt: skip
    if isinstance(source, torch.Tensor):
        return _TensorBatches(source, batch_size, seed)
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not (folder / "manifest.json").is_file():
            raise ValueError(f"source={str(source)!r} is not an activation store folder (no manifest.json); to "
                             "stream text through a model pass model=...")  # fmt: skip
        import lens.store

        source = lens.store.open(folder)
    if hasattr(source, "stream") and hasattr(source, "hooks"):
        if hook_name not in source:
            raise ValueError(f"hook_name={hook_name!r} is not in the store; it holds {list(source.hooks)}")
        return _StoreBatches(source, hook_name, batch_size, seed)
    raise ValueError(f"unsupported source {type(source).__name__}: give an activation store (or its folder), an "
                     "activation tensor [rows, d_in], or model=... with text / token ids")  # fmt: skip


# -- the math ------------------------------------------------------------------------------------------------
def _geometric_median(x: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """Weiszfeld's iteration from the mean (float64)."""
    x = x.double()
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(1e-8)
        y = (w[:, None] * x).sum(0) / w.sum()
    return y


def _forward(sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pre-activations, feature acts, reconstruction) of the training SAE (normalize_activations="none")."""
    x_in = x - sae.b_dec if sae.cfg.apply_b_dec_to_input else x
    pre = x_in @ sae.W_enc + sae.b_enc
    if sae.cfg.architecture == "topk":
        top = pre.topk(sae.cfg.k, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    else:
        acts = torch.relu(pre)
    return pre, acts, acts @ sae.W_dec + sae.b_dec


def _aux_loss(sae, x, recon, pre, dead, aux_k) -> torch.Tensor | None:
    n_dead = int(dead.sum())
    if n_dead == 0:
        return None
    k_aux = aux_k if aux_k is not None else max(1, x.shape[-1] // 2)
    scale = min(n_dead / k_aux, 1.0)
    k_aux = min(k_aux, n_dead)
    residual = (x - recon).detach()
    top = pre.masked_fill(~dead, -math.inf).topk(k_aux, dim=-1)
    aux_acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    return scale * (aux_acts @ sae.W_dec - residual).pow(2).sum(-1).mean()


def _remove_parallel_grad(sae: SAE) -> None:
    g, w = sae.W_dec.grad, sae.W_dec.data
    if g is not None:
        g -= (g * w).sum(-1, keepdim=True) * w


# -- checkpoints ---------------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _latest_checkpoint(folder: Path) -> Path | None:
    found = []
    for p in folder.iterdir() if folder.is_dir() else ():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file() and (p / WEIGHTS_FILE).is_file():
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def _write_checkpoint(folder: Path, sae: SAE, state: dict, keep: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{state['step']:09d}"
    if final.exists():
        return final
    tmp = folder / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    sae.save(tmp)
    torch.save(state, tmp / STATE_FILE)
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    os.replace(tmp, final)
    _fsync_dir(folder)
    steps = sorted(int(m.group(1)) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name)))
    for s in steps[:-keep]:
        shutil.rmtree(folder / f"step-{s:09d}", ignore_errors=True)
    for p in folder.glob(".tmp-step-*"):  # a killed run's leftovers
        if p != tmp:
            shutil.rmtree(p, ignore_errors=True)
    return final


# -- the entry point -----------------------------------------------------------------------------------------
def train(
    source: Any,
    hook_name: str,
    d_sae: int,
    architecture: str = "topk",
    k: int | None = 32,
    *,
    model: Any = None,
    lr: float = 3e-4,
    steps: int = 1000,
    batch_size: int = 4096,
    seed: int = 0,
    l1_coefficient: float = 5.0,
    aux_k: int | None = None,
    aux_coefficient: float = 1 / 32,
    dead_after_tokens: int = 10_000_000,
    b_dec_init: str = "mean",
    apply_b_dec_to_input: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1000,
    keep_checkpoints: int = 2,
    context_size: int = 128,
    prepend_bos: bool | None = None,
    exclude_bos: bool = True,
    model_batch_size: int = 8,
    buffer_contexts: int | None = None,
    progress: bool = True,
    log_every: int = 10,
    device: str | torch.device | None = None,
    dtype: str = "float32",
) -> SAE:
    """Train an SAE on ``hook_name``'s activations from ``source`` (see the module docstring) and return it.

    ``k`` is used for ``architecture="topk"`` only (``"standard"`` ignores it and uses ``l1_coefficient``).
    ``device``: where the SAE trains (default: the model's device, else CPU); ``dtype``: its parameters' dtype.
    The returned SAE's ``cfg.metadata["training"]`` records the arguments and the last logged metrics.
    """
    if architecture not in TRAINABLE:
        why = " (jumprelu training is not implemented)" if architecture == "jumprelu" else ""
        raise ValueError(f"architecture={architecture!r}: lens.sae.train trains one of {TRAINABLE}{why}")
    if not isinstance(hook_name, str) or not hook_name:
        raise ValueError(f"hook_name={hook_name!r} must be a hook name (a non-empty str)")
    _int("d_sae", d_sae, 1)
    if architecture == "topk":
        _int("k", k, 1)
        if k > d_sae:
            raise ValueError(f"k={k} must be at most d_sae={d_sae}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr={lr!r} must be a finite number > 0")
    _int("steps", steps, 1)
    _int("batch_size", batch_size, 1)
    _int("seed", seed, 0)
    _nonneg("l1_coefficient", l1_coefficient)
    _nonneg("aux_coefficient", aux_coefficient)
    if aux_k is not None:
        _int("aux_k", aux_k, 1)
    _int("dead_after_tokens", dead_after_tokens, 1)
    _int("checkpoint_every", checkpoint_every, 1)
    _int("keep_checkpoints", keep_checkpoints, 1)
    _int("model_batch_size", model_batch_size, 1)
    _int("log_every", log_every, 1)
    if buffer_contexts is not None:
        _int("buffer_contexts", buffer_contexts, 1)
    if b_dec_init not in ("mean", "geometric_median", "zeros"):
        raise ValueError(f"b_dec_init={b_dec_init!r} must be 'mean', 'geometric_median' or 'zeros'")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} must be one of {_DTYPES}")
    if device is None:
        device = next(model.parameters()).device if model is not None else torch.device("cpu")
    device = torch.device(device)
    data = _open_source(source, hook_name, batch_size, seed, model, context_size, prepend_bos, model_batch_size,
                        buffer_contexts, exclude_bos)  # fmt: skip

    args = dict(hook_name=hook_name, d_sae=d_sae, architecture=architecture, k=k if architecture == "topk" else None,
                lr=lr, steps=steps, batch_size=batch_size, seed=seed, l1_coefficient=l1_coefficient, aux_k=aux_k,
                aux_coefficient=aux_coefficient, dead_after_tokens=dead_after_tokens, b_dec_init=b_dec_init,
                apply_b_dec_to_input=apply_b_dec_to_input, context_size=context_size, prepend_bos=prepend_bos,
                exclude_bos=exclude_bos, model_batch_size=model_batch_size, buffer_contexts=buffer_contexts,
                dtype=dtype, source=data.describe, checkpoint_every=checkpoint_every,
                keep_checkpoints=keep_checkpoints, log_every=log_every)  # fmt: skip

    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    resume = _latest_checkpoint(folder) if folder is not None else None
    saved = torch.load(resume / STATE_FILE, map_location="cpu", weights_only=False) if resume else None
    if saved is not None:
        differ = sorted(n for n in args if n not in _RESUMABLE_CHANGES and saved["args"].get(n) != args[n])
        if differ:
            raise ValueError(f"checkpoint {resume} was written by a run with other arguments: "
                             + ", ".join(f"{n}={saved['args'].get(n)!r} (now {args[n]!r})" for n in differ)
                             + "; use another checkpoint_dir or the same arguments")  # fmt: skip
        if saved["step"] > steps:
            raise ValueError(f"steps={steps} is below the checkpoint's step {saved['step']} in {resume}")

    step, pos = (saved["step"], tuple(saved["pos"])) if saved else (0, (0, 0))
    batches = data.iterate(pos)
    first = None
    d_in = data.d_in
    if d_in is None:
        first = next(batches)
        d_in = first[1].shape[-1]
    cfg = SAEConfig(architecture=architecture, d_in=d_in, d_sae=d_sae, hook_name=hook_name,
                    k=k if architecture == "topk" else None, apply_b_dec_to_input=apply_b_dec_to_input, dtype=dtype,
                    device=str(device),
                    metadata={"model_name": getattr(getattr(model, "cfg", None), "model_name", None)})  # fmt: skip
    sae = SAE(cfg, seed=seed)
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999))
    tokens_since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)
    n_tokens = 0
    if saved is not None:
        from safetensors.torch import load_file

        sae.load_state_dict(load_file(str(resume / WEIGHTS_FILE), device=str(device)))
        opt.load_state_dict(saved["optimizer"])
        tokens_since_fired = saved["tokens_since_fired"].to(device)
        n_tokens = saved["n_tokens"]
    metrics: dict[str, float] = dict(saved["metrics"]) if saved else {}
    torch_dtype = sae.W_enc.dtype

    def state() -> dict:
        return {"step": step, "pos": list(pos), "optimizer": opt.state_dict(), "n_tokens": n_tokens,
                "tokens_since_fired": tokens_since_fired.cpu(), "args": args, "metrics": metrics}  # fmt: skip

    bar = None
    if progress and step < steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=step, desc=f"SAE {hook_name}", file=sys.stderr, dynamic_ncols=True)
    try:
        while step < steps:
            pos, x = first if first is not None else next(batches)
            first = None
            x = x.to(device=device, dtype=torch_dtype, non_blocking=True)
            if step == 0 and b_dec_init != "zeros":
                with torch.no_grad():
                    centre = x.double().mean(0) if b_dec_init == "mean" else _geometric_median(x)
                    sae.b_dec.copy_(centre.to(torch_dtype))
            pre, acts, recon = _forward(sae, x)
            mse = (recon - x).pow(2).sum(-1).mean()
            loss = mse
            if architecture == "standard":
                loss = loss + l1_coefficient * (acts * sae.W_dec.norm(dim=1)).sum(-1).mean()
            elif aux_coefficient > 0:
                aux = _aux_loss(sae, x, recon, pre, tokens_since_fired >= dead_after_tokens, aux_k)
                if aux is not None:
                    loss = loss + aux_coefficient * aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            _remove_parallel_grad(sae)
            opt.step()
            with torch.no_grad():
                sae.W_dec.data /= sae.W_dec.data.norm(dim=-1, keepdim=True)
                fired = (acts > 0).any(0)
                tokens_since_fired += x.shape[0]
                tokens_since_fired[fired] = 0
            step += 1
            n_tokens += x.shape[0]
            if step % log_every == 0 or step == steps:
                with torch.no_grad():
                    sst = (x - x.mean(0)).pow(2).sum()
                    metrics = {
                        "mse": mse.item() / x.shape[-1],
                        "l0": (acts > 0).sum(-1).float().mean().item(),
                        "explained_variance": 1 - ((recon - x).pow(2).sum() / sst).item() if sst > 0 else float("nan"),
                        "dead_fraction": (tokens_since_fired >= dead_after_tokens).float().mean().item(),
                        "loss": loss.item(),
                    }
                if bar is not None:
                    bar.set_postfix(mse=f"{metrics['mse']:.4g}", l0=f"{metrics['l0']:.1f}",
                                    ev=f"{metrics['explained_variance']:.3f}",
                                    dead=f"{metrics['dead_fraction']:.3f}", refresh=False)  # fmt: skip
            if bar is not None:
                bar.update(1)
            if folder is not None and (step % checkpoint_every == 0 or step == steps):
                _write_checkpoint(folder, sae, state(), keep_checkpoints)
    finally:
        if bar is not None:
            bar.close()
    sae.cfg.metadata["training"] = {"args": args, "steps": step, "tokens": n_tokens, "metrics": metrics}
    sae.tokens_since_fired = tokens_since_fired
    return sae
