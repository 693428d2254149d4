"""Train a sparse autoencoder or transcoder: ``lens.sae.train(source, hook_name, d_sae, ...) -> SAE``.

Sources (``source``; :mod:`lens.sae.train_sources`):

- an activation store (a :class:`lens.store.Store`, or the folder of one): batches come from
  ``store.stream(hooks=hook_name, batch_size=..., shuffle=True, seed=seed, drop_last=True)``, epoch after epoch
  (``set_epoch``), so nothing but the stream's shuffle buffer is held in memory;
- ``model=`` plus a text or token source (a list of strings, text files or a folder, a token-id array: whatever
  :meth:`lens.store.TokenSource.from_any` reads): contexts are packed by ``TokenSource``, run through the model in
  batches of ``model_batch_size`` with ``run_with_cache(names_filter=[hook_name], stop_at_layer=L + 1)``, and the
  activations of ``buffer_contexts`` contexts at a time are shuffled (seeded) and cut into batches; the corpus is
  never held, only that buffer;
- a floating-point tensor ``[rows, d_in]`` of activations (no model): shuffled each epoch with a seeded generator.

Transcoders (``hook_name_out=``): the input is read at ``hook_name`` and the target at ``hook_name_out``, rows
aligned: both hooks from the store, both captured in one ``run_with_cache``, or ``source=(x, y)``, a pair of
tensors. The loss is ``||y - decode(encode(x))||^2``; ``apply_b_dec_to_input`` defaults to False for a
transcoder (True for an SAE) and must be False when the widths differ.

Training (SAELens's / Gao et al.'s / Rajamanoharan et al.'s recipes): Adam (``betas=(0.9, 0.999)``) at a
constant ``lr``; the loss is the squared error summed over the features and averaged over the batch, plus

- ``"standard"``: ``l1_coefficient * mean(sum_i f_i * ||W_dec[i]||)``;
- ``"topk"``: the auxiliary loss on dead latents (``aux_coefficient * min(n_dead / aux_k, 1) * mean ||e - ê||^2``,
  where ``e = y - ŷ`` (detached) and ``ê`` is decoded, without ``b_dec``, from the ``min(aux_k, n_dead)`` largest
  pre-activations of the dead latents after a ReLU; ``aux_k`` defaults to ``d_out // 2``, ``aux_coefficient`` to
  1/32, as Gao et al.);
- ``"jumprelu"``: ``l0_coefficient * mean(sum_i H(pre_i - t_i))``; the threshold ``t = exp(log_threshold)`` is
  trained (from ``jumprelu_init_threshold``) through straight-through estimators with the rectangle kernel of
  width ``jumprelu_bandwidth`` (:mod:`lens.sae.objectives`), for both the JumpReLU and the step of the L0
  penalty. The saved and returned SAE is an ordinary ``jumprelu`` SAE with ``threshold = exp(log_threshold)``.

Before each step the gradient component of ``W_dec`` parallel to its rows is removed; after it the rows are
renormalised to unit norm. ``b_dec`` starts at the mean (``b_dec_init="mean"``) or an approximate geometric
median (Weiszfeld, ``"geometric_median"``) of the first batch's targets, or zero (``"zeros"``). A latent is
dead once it has not fired for ``dead_after_tokens`` training tokens (``tokens_since_fired`` is kept per latent).

``normalize_activations="expected_average_only_in"`` (SAELens): the factor ``s = sqrt(d_in) / mean ||x||`` is
estimated from the first ``min(n_batches_for_norm_estimate, steps)`` batches of the first epoch (read apart from
the training stream, which is unchanged), the SAE trains on ``s * x`` (and ``s * y``), checkpoints hold those
weights with ``norm_scaling_factor = s`` in cfg.json (``lens.sae.load`` applies it), and the returned SAE has
``s`` folded into its weights (``fold_activation_norm_scaling_factor``: ``normalize_activations="none"``), so it
reconstructs raw activations. The logged ``mse`` is in scaled units; explained variance is scale-free.

Checkpoints (``checkpoint_dir``, every ``checkpoint_every`` steps and at the end): ``step-000123/`` holds the SAE
in SAELens's format (``sae.save``: ``cfg.json`` + ``sae_weights.safetensors``), ``trainer_state.pt`` (optimizer
state, step, stream position (epoch, batch), ``tokens_since_fired``, ``log_threshold``, the scaling factor, the
run's arguments) and ``checksums.json`` (SHA-256 of the other three). Each is written to a temporary folder, every
file ``fsync``ed, then renamed into place and the parent ``fsync``ed, so a killed run leaves complete
checkpoints only (a dead run's temporary folders are removed). Running the same call again resumes from the newest
checkpoint whose files match their checksums; a corrupted one is renamed ``step-...corrupt`` with a warning naming
the file and the previous one is used (if none is intact, :class:`CorruptCheckpointError` names the files). On CPU
the result equals an uninterrupted run bit for bit (``steps`` may be raised to train further; other arguments
that differ are refused, naming them).

Bad arguments raise ``ValueError`` naming the value before any data is read.

>>> sae = lens.sae.train("acts", "blocks.1.hook_resid_post", d_sae=4096, k=32, steps=2000)   # doctest: +SKIP
>>> tc = lens.sae.train(text, "blocks.0.ln2.hook_normalized", 2048, "jumprelu", model=model,
...                     hook_name_out="blocks.0.hook_mlp_out")                                # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from lens.sae import objectives as obj
from lens.sae.config import SAEConfig
from lens.sae.modules import CFG_FILE, SAE, WEIGHTS_FILE
from lens.sae.train_sources import open_source

STATE_FILE = "trainer_state.pt"
CHECKSUM_FILE = "checksums.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TMP_DIR = re.compile(r"^\.tmp-step-\d+-(\d+)$")
TRAINABLE = ("standard", "topk", "jumprelu")
_NORMALIZATIONS = ("none", "expected_average_only_in")
_DTYPES = ("float32", "float64", "float16", "bfloat16")
# arguments that may change between a run and its resumption
_RESUMABLE_CHANGES = {"steps", "progress", "checkpoint_every", "keep_checkpoints", "log_every"}
# arguments added after the first checkpoints were written: their value in a checkpoint without them
_ADDED_ARGS = {"hook_name_out": None, "l0_coefficient": None, "jumprelu_bandwidth": None,
               "jumprelu_init_threshold": None, "normalize_activations": "none",
               "n_batches_for_norm_estimate": None}  # fmt: skip


class CorruptCheckpointError(RuntimeError):
    """Every checkpoint in ``checkpoint_dir`` has a file that does not match its checksum or cannot be read."""


# -- validation ------------------------------------------------------------------------------------
def _int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}={value!r} must be an int >= {low}")


def _number(name: str, value: Any, positive: bool = False) -> None:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
            or (positive and value == 0)):  # fmt: skip
        raise ValueError(f"{name}={value!r} must be a finite number {'> 0' if positive else '>= 0'}")


# -- checkpoints ---------------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _complete_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of the ``step-N`` folders holding the weights and the trainer state, newest first."""
    found = []
    for p in folder.iterdir() if folder.is_dir() else ():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file() and (p / WEIGHTS_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def _latest_checkpoint(folder: Path) -> Path | None:
    found = _complete_checkpoints(folder)
    return found[0][1] if found else None


def _read_checkpoint(path: Path, device: torch.device) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(trainer state, SAE weights)`` of checkpoint ``path``, each file checked against ``checksums.json``
    (when present: older checkpoints have none); ValueError naming the file that is corrupted."""
    from safetensors.torch import load as load_safetensors

    sums_path = path / CHECKSUM_FILE
    sums = None
    if sums_path.is_file():
        try:
            sums = json.loads(sums_path.read_text())
        except ValueError as e:
            raise ValueError(f"{sums_path} is not valid JSON ({e})") from e
    blobs = {}
    for name in (WEIGHTS_FILE, STATE_FILE):
        blob = (path / name).read_bytes()
        if sums is not None and hashlib.sha256(blob).hexdigest() != sums.get(name):
            raise ValueError(f"{path / name} does not match its SHA-256 in {CHECKSUM_FILE} ({len(blob)} bytes)")
        blobs[name] = blob
    try:
        weights = load_safetensors(blobs[WEIGHTS_FILE])
    except Exception as e:  # noqa: BLE001  (safetensors raises its own error types)
        raise ValueError(f"{path / WEIGHTS_FILE} cannot be read ({type(e).__name__}: {e})") from e
    try:
        state = torch.load(io.BytesIO(blobs[STATE_FILE]), map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001  (a truncated zip raises RuntimeError, a garbled pickle others)
        raise ValueError(f"{path / STATE_FILE} cannot be read ({type(e).__name__}: {e})") from e
    return state, {k: v.to(device) for k, v in weights.items()}


def _resume_from(folder: Path, device: torch.device) -> tuple[Path | None, dict | None, dict | None]:
    """The newest intact checkpoint in ``folder``: ``(path, state, weights)``, or Nones when there is none.
    Corrupted newer ones are renamed ``<name>.corrupt`` (so they are neither loaded nor shadow a rewrite) with a
    warning; when every checkpoint is corrupted, :class:`CorruptCheckpointError` names them."""
    problems = []
    for _, path in _complete_checkpoints(folder):
        try:
            state, weights = _read_checkpoint(path, device)
        except ValueError as e:
            problems.append((path, str(e)))
            continue
        for bad, why in problems:
            aside = bad.with_name(bad.name + ".corrupt")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(bad, aside)
            warnings.warn(f"skipping corrupted checkpoint: {why}; resuming from {path} (the corrupted one is now "
                          f"{aside.name})", RuntimeWarning, stacklevel=3)  # fmt: skip
        return path, state, weights
    if problems:
        raise CorruptCheckpointError("no intact checkpoint to resume from in " + str(folder) + ": "
                                     + "; ".join(why for _, why in problems)
                                     + "; delete the corrupted folders to start afresh")  # fmt: skip
    return None, None, None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours: a leftover of this process, not a write in progress
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dead_temporaries(folder: Path, keep: Path | None = None) -> None:
    """Remove ``.tmp-step-N-PID`` folders of processes that no longer run (a killed run's partial writes)."""
    for p in folder.iterdir() if folder.is_dir() else ():
        m = _TMP_DIR.match(p.name)
        if m and p != keep and not _pid_alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)


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
    sums = {}
    for name in (CFG_FILE, WEIGHTS_FILE, STATE_FILE):
        with open(tmp / name, "rb") as fh:
            sums[name] = hashlib.sha256(fh.read()).hexdigest()
            os.fsync(fh.fileno())
    with open(tmp / CHECKSUM_FILE, "w") as fh:
        json.dump(sums, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_dir(tmp)
    os.replace(tmp, final)
    _fsync_dir(folder)
    older = [s for s, _ in _complete_checkpoints(folder) if s < state["step"]]
    for s in older[keep - 1 :]:
        shutil.rmtree(folder / f"step-{s:09d}", ignore_errors=True)
    _remove_dead_temporaries(folder)
    return final


def _estimate_norm_scale(data: Any, n_batches: int, d_in: int) -> float:
    """SAELens's ``sqrt(d_in) / mean ||x||`` over the first ``n_batches`` batches of the first epoch (float64)."""
    total, rows = 0.0, 0
    for i, (_, x, _) in enumerate(data.iterate((0, 0))):
        total += x.double().norm(dim=-1).sum().item()
        rows += x.shape[0]
        if i + 1 == n_batches:
            break
    if not total > 0:
        raise ValueError("normalize_activations='expected_average_only_in': the activations' mean norm is 0")
    return math.sqrt(d_in) / (total / rows)


# -- the entry point -----------------------------------------------------------------------------------------
def train(
    source: Any,
    hook_name: str,
    d_sae: int,
    architecture: str = "topk",
    k: int | None = 32,
    *,
    model: Any = None,
    hook_name_out: str | None = None,
    lr: float = 3e-4,
    steps: int = 1000,
    batch_size: int = 4096,
    seed: int = 0,
    l1_coefficient: float = 5.0,
    aux_k: int | None = None,
    aux_coefficient: float = 1 / 32,
    l0_coefficient: float = 1.0,
    jumprelu_bandwidth: float = 0.001,
    jumprelu_init_threshold: float = 0.001,
    dead_after_tokens: int = 10_000_000,
    b_dec_init: str = "mean",
    apply_b_dec_to_input: bool | None = None,
    normalize_activations: str = "none",
    n_batches_for_norm_estimate: int = 100,
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
    """Train an SAE (or, with ``hook_name_out``, a transcoder) on ``hook_name``'s activations from ``source``
    (see the module docstring) and return it.

    ``k`` is used for ``architecture="topk"`` only; ``l1_coefficient`` for ``"standard"``; ``l0_coefficient``,
    ``jumprelu_bandwidth`` and ``jumprelu_init_threshold`` for ``"jumprelu"``. ``apply_b_dec_to_input``: default
    True for an SAE, False for a transcoder. ``device``: where the SAE trains (default: the model's device, else
    CPU); ``dtype``: its parameters' dtype. The returned SAE's ``cfg.metadata["training"]`` records the arguments,
    the scaling factor, the last logged metrics and the checkpoint it resumed from (``resumed_from``, or None).

    >>> x = torch.randn(1024, 16)
    >>> sae = train(x, "h", d_sae=32, architecture="jumprelu", steps=3, batch_size=256, progress=False)
    >>> sae.cfg.architecture, tuple(sae.threshold.shape)
    ('jumprelu', (32,))
    """
    if architecture not in TRAINABLE:
        raise ValueError(f"architecture={architecture!r}: lens.sae.train trains one of {TRAINABLE}")
    if not isinstance(hook_name, str) or not hook_name:
        raise ValueError(f"hook_name={hook_name!r} must be a hook name (a non-empty str)")
    if hook_name_out is not None and (not isinstance(hook_name_out, str) or not hook_name_out):
        raise ValueError(f"hook_name_out={hook_name_out!r} must be None or a hook name (a non-empty str)")
    _int("d_sae", d_sae, 1)
    if architecture == "topk":
        _int("k", k, 1)
        if k > d_sae:
            raise ValueError(f"k={k} must be at most d_sae={d_sae}")
    _number("lr", lr, positive=True)
    _int("steps", steps, 1)
    _int("batch_size", batch_size, 1)
    _int("seed", seed, 0)
    _number("l1_coefficient", l1_coefficient)
    _number("aux_coefficient", aux_coefficient)
    _number("l0_coefficient", l0_coefficient)
    _number("jumprelu_bandwidth", jumprelu_bandwidth, positive=True)
    _number("jumprelu_init_threshold", jumprelu_init_threshold, positive=True)
    if aux_k is not None:
        _int("aux_k", aux_k, 1)
    _int("dead_after_tokens", dead_after_tokens, 1)
    _int("checkpoint_every", checkpoint_every, 1)
    _int("keep_checkpoints", keep_checkpoints, 1)
    _int("model_batch_size", model_batch_size, 1)
    _int("log_every", log_every, 1)
    _int("n_batches_for_norm_estimate", n_batches_for_norm_estimate, 1)
    if buffer_contexts is not None:
        _int("buffer_contexts", buffer_contexts, 1)
    if b_dec_init not in ("mean", "geometric_median", "zeros"):
        raise ValueError(f"b_dec_init={b_dec_init!r} must be 'mean', 'geometric_median' or 'zeros'")
    if apply_b_dec_to_input is not None and not isinstance(apply_b_dec_to_input, bool):
        raise ValueError(f"apply_b_dec_to_input={apply_b_dec_to_input!r} must be None, True or False")
    if normalize_activations not in _NORMALIZATIONS:
        raise ValueError(f"normalize_activations={normalize_activations!r}: lens.sae.train supports "
                         f"{_NORMALIZATIONS}")  # fmt: skip
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} must be one of {_DTYPES}")
    if device is None:
        device = next(model.parameters()).device if model is not None else torch.device("cpu")
    device = torch.device(device)
    data = open_source(source, hook_name, hook_name_out, batch_size, seed, model, context_size, prepend_bos,
                       model_batch_size, buffer_contexts, exclude_bos)  # fmt: skip
    d_in, d_out = data.d_in, data.d_out
    if apply_b_dec_to_input is None:
        apply_b_dec_to_input = hook_name_out is None
    if apply_b_dec_to_input and d_in != d_out:
        raise ValueError(f"apply_b_dec_to_input=True needs d_in == d_out, but {hook_name!r} has width {d_in} and "
                         f"hook_name_out={hook_name_out!r} {d_out}; pass apply_b_dec_to_input=False")  # fmt: skip
    jump, normalizing = architecture == "jumprelu", normalize_activations != "none"

    args = dict(hook_name=hook_name, hook_name_out=hook_name_out, d_sae=d_sae, architecture=architecture,
                k=k if architecture == "topk" else None, lr=lr, steps=steps, batch_size=batch_size, seed=seed,
                l1_coefficient=l1_coefficient, aux_k=aux_k, aux_coefficient=aux_coefficient,
                l0_coefficient=l0_coefficient if jump else None,
                jumprelu_bandwidth=jumprelu_bandwidth if jump else None,
                jumprelu_init_threshold=jumprelu_init_threshold if jump else None,
                dead_after_tokens=dead_after_tokens, b_dec_init=b_dec_init, apply_b_dec_to_input=apply_b_dec_to_input,
                normalize_activations=normalize_activations,
                n_batches_for_norm_estimate=n_batches_for_norm_estimate if normalizing else None,
                context_size=context_size, prepend_bos=prepend_bos, exclude_bos=exclude_bos,
                model_batch_size=model_batch_size, buffer_contexts=buffer_contexts, dtype=dtype, source=data.describe,
                checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints, log_every=log_every)  # fmt: skip

    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    resume, saved, weights = None, None, None
    if folder is not None:
        _remove_dead_temporaries(folder)
        resume, saved, weights = _resume_from(folder, device)
    if saved is not None:
        was = {n: saved["args"].get(n, _ADDED_ARGS.get(n)) for n in args}
        differ = sorted(n for n in args if n not in _RESUMABLE_CHANGES and was[n] != args[n])
        if differ:
            raise ValueError(f"checkpoint {resume} was written by a run with other arguments: "
                             + ", ".join(f"{n}={was[n]!r} (now {args[n]!r})" for n in differ)
                             + "; use another checkpoint_dir or the same arguments")  # fmt: skip
        if saved["step"] > steps:
            raise ValueError(f"steps={steps} is below the checkpoint's step {saved['step']} in {resume}")

    scale = None
    if normalizing and saved is not None:
        scale = saved["norm_scaling_factor"]
    elif normalizing:
        scale = _estimate_norm_scale(data, min(n_batches_for_norm_estimate, steps), d_in)
    cfg = SAEConfig(architecture=architecture, d_in=d_in, d_sae=d_sae, hook_name=hook_name,
                    hook_name_out=hook_name_out, d_out=d_out, k=k if architecture == "topk" else None,
                    apply_b_dec_to_input=apply_b_dec_to_input, normalize_activations=normalize_activations,
                    reshape_activations=data.reshape,
                    dtype=dtype, device=str(device),
                    metadata={"model_name": getattr(getattr(model, "cfg", None), "model_name", None)})  # fmt: skip
    sae = SAE(cfg, seed=seed)
    sae.norm_scaling_factor = scale
    torch_dtype = sae.W_enc.dtype
    trained = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
    log_threshold = None
    if jump:
        init = torch.full((d_sae,), math.log(jumprelu_init_threshold), dtype=torch.float64)
        log_threshold = torch.nn.Parameter(init.to(device=device, dtype=torch_dtype))
        trained.append(log_threshold)
    opt = torch.optim.Adam(trained, lr=lr, betas=(0.9, 0.999))
    tokens_since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)
    n_tokens = 0
    if saved is not None:
        sae.load_state_dict(weights)
        opt.load_state_dict(saved["optimizer"])
        tokens_since_fired = saved["tokens_since_fired"].to(device)
        n_tokens = saved["n_tokens"]
        if jump:
            log_threshold.data.copy_(saved["log_threshold"].to(device))
    metrics: dict[str, float] = dict(saved["metrics"]) if saved else {}
    step, pos = (saved["step"], tuple(saved["pos"])) if saved else (0, (0, 0))
    batches = data.iterate(pos)

    def sync_threshold() -> None:
        if jump:
            with torch.no_grad():
                sae.threshold.copy_(log_threshold.exp())

    def state() -> dict:
        return {"step": step, "pos": list(pos), "optimizer": opt.state_dict(), "n_tokens": n_tokens,
                "tokens_since_fired": tokens_since_fired.cpu(), "args": args, "metrics": metrics,
                "norm_scaling_factor": scale,
                "log_threshold": log_threshold.detach().cpu().clone() if jump else None}  # fmt: skip

    bar = None
    if progress and step < steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=step, desc=f"SAE {hook_name}", file=sys.stderr, dynamic_ncols=True)
    try:
        while step < steps:
            pos, x_raw, y_raw = next(batches)
            x = x_raw.to(device=device, dtype=torch_dtype, non_blocking=True)
            y = x if y_raw is x_raw else y_raw.to(device=device, dtype=torch_dtype, non_blocking=True)
            if scale is not None:
                x, y = (x * scale, y * scale) if y is not x else (x * scale,) * 2
            if step == 0 and b_dec_init != "zeros":
                with torch.no_grad():
                    centre = y.double().mean(0) if b_dec_init == "mean" else obj.geometric_median(y)
                    sae.b_dec.copy_(centre.to(torch_dtype))
            threshold = log_threshold.exp() if jump else None
            pre, acts, recon = obj.forward(sae, x, threshold, jumprelu_bandwidth)
            mse = (recon - y).pow(2).sum(-1).mean()
            loss = mse
            if architecture == "standard":
                loss = loss + l1_coefficient * (acts * sae.W_dec.norm(dim=1)).sum(-1).mean()
            elif jump:
                loss = loss + l0_coefficient * obj.step(pre, threshold, jumprelu_bandwidth).sum(-1).mean()
            elif aux_coefficient > 0:
                aux = obj.aux_loss(sae, y, recon, pre, tokens_since_fired >= dead_after_tokens, aux_k)
                if aux is not None:
                    loss = loss + aux_coefficient * aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            obj.remove_parallel_grad(sae)
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
                    sst = (y - y.mean(0)).pow(2).sum()
                    metrics = {
                        "mse": mse.item() / y.shape[-1],
                        "l0": (acts > 0).sum(-1).float().mean().item(),
                        "explained_variance": 1 - ((recon - y).pow(2).sum() / sst).item() if sst > 0 else float("nan"),
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
                sync_threshold()
                _write_checkpoint(folder, sae, state(), keep_checkpoints)
    finally:
        if bar is not None:
            bar.close()
    sync_threshold()
    if scale is not None:
        sae.fold_activation_norm_scaling_factor(scale)
    sae.cfg.metadata["training"] = {"args": args, "steps": step, "tokens": n_tokens, "metrics": metrics,
                                    "norm_scaling_factor": scale,
                                    "resumed_from": str(resume) if resume is not None else None}  # fmt: skip
    sae.tokens_since_fired = tokens_since_fired
    return sae
