"""lens.store.harvest: what it stores, what it records, when it refuses.

The oracle is ``model.run_with_cache`` on the same contexts (packed by :class:`TokenSource`, which
tests/store/test_sources.py checks against its own tokenisation), in the same batches and with the same hooks
cached (which hooks are active can pick another attention kernel, so only then are the values bit-equal), the
kept positions picked out here; shard files are checked with hashlib and safetensors' own loader."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lens
import lens.store
from lens.store import shards as fmt
from lens.store.sources import TokenSource

MODEL = "gelu-4l"
CTX, BATCH = 16, 4
HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.hook_mlp_out", "blocks.2.attn.hook_pattern", "blocks.0.attn.hook_q"]
DOCS = [f"document {i}: " + "def f(x): return x * 2  # é\n" * (i % 3 + 1) for i in range(16)]  # 55 contexts
harvest_module = importlib.import_module("lens.store.harvest")  # (lens.store.harvest is the function)


@pytest.fixture(scope="module")
def model():
    return lens.zoo.load(MODEL)


def source_contexts(model, source, context_size=CTX, **kw) -> tuple[list[int], torch.Tensor]:
    numbers, rows = [], []
    for n, c in TokenSource.from_any(source, model.tokenizer, context_size, **kw).contexts():
        numbers.append(n)
        rows.append(torch.from_numpy(c))
    return numbers, torch.stack(rows)


def expected(model, ctx, hooks, kept, batch=BATCH, shard=None) -> dict[str, torch.Tensor]:
    """run_with_cache over ``ctx`` in the harvest's batches (``batch`` contexts, never across a shard of
    ``shard`` contexts), rows = (context, kept position), the query axis for attention patterns."""
    shard = shard or len(ctx)
    parts: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    for s in range(0, len(ctx), shard):
        for b in range(s, min(s + shard, len(ctx)), batch):
            _, cache = model.run_with_cache(ctx[b : min(b + batch, s + shard)], names_filter=list(hooks))
            for h in hooks:
                a = cache[h]
                a = a[:, :, kept].transpose(1, 2) if h.endswith(("hook_pattern", "hook_attn_scores")) else a[:, kept]
                parts[h].append(a.reshape(-1, *a.shape[2:]))
    return {h: torch.cat(p) for h, p in parts.items()}


def run(model, out, source=DOCS, hooks=HOOKS, **kw) -> lens.store.Store:
    kw = {"context_size": CTX, "batch_size": BATCH, **kw}
    assert lens.store.harvest(model, source, hooks=hooks, out_dir=out, progress=False, **kw) == Path(out)
    return lens.store.open(out)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


# -- values -----------------------------------------------------------------------------------------
def test_fp32_values_equal_run_with_cache(model, tmp_path):
    hooks = [*HOOKS, "hook_embed", "ln_final.hook_normalized"]  # before, inside and after the blocks
    store = run(model, tmp_path / "s", hooks=hooks, shard_contexts=8)
    _, ctx = source_contexts(model, DOCS)
    kept = list(range(1, CTX))
    want = expected(model, ctx, hooks, kept)
    assert len(store) == len(ctx) * len(kept)
    for h in hooks:
        got = store[h][:]
        assert got.dtype == torch.float32 and got.shape == want[h].shape, h
        assert torch.equal(got, want[h]), h
    assert torch.equal(store.tokens[:], ctx[:, 1:].reshape(-1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, "bfloat16", "float16", "torch.float64"])
def test_storage_dtype_is_the_fp32_activations_rounded_once(model, tmp_path, dtype):
    store = run(model, tmp_path / "s", dtype=dtype, max_tokens=CTX * 12)
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype.removeprefix("torch."))
    _, ctx = source_contexts(model, DOCS)
    want = expected(model, ctx[:12], HOOKS, list(range(1, CTX)))
    for h in HOOKS:
        got = store[h][:]
        assert got.dtype == torch_dtype and store.identity["hooks"][h]["dtype"] == str(torch_dtype)[6:]
        assert torch.equal(got, want[h].to(torch_dtype)), h
        if torch_dtype != torch.float64:
            assert not torch.equal(got.float(), want[h])  # (rounding did happen: the check can tell)
    header, _ = fmt.header(tmp_path / "s" / fmt.shard_name(0))
    code = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64"}[torch_dtype]
    assert {header[h]["dtype"] for h in HOOKS} == {code}


@pytest.mark.parametrize(
    "positions, exclude_bos, prepend_bos, kept",
    [
        ("all", True, None, list(range(1, CTX))),
        ("all", False, None, list(range(CTX))),
        (slice(None, 4), True, None, [1, 2, 3]),
        (slice(None, 4), False, None, [0, 1, 2, 3]),
        (slice(2, None, 5), True, None, [2, 7, 12]),
        (slice(-3, None), True, None, [13, 14, 15]),
        ("all", True, False, list(range(CTX))),  # no BOS prepended: position 0 is a source token, kept
    ],
)
def test_positions(model, tmp_path, positions, exclude_bos, prepend_bos, kept):
    store = run(model, tmp_path / "s", positions=positions, exclude_bos=exclude_bos, prepend_bos=prepend_bos,
                max_tokens=CTX * 8)  # fmt: skip
    bos = model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
    _, ctx = source_contexts(model, DOCS, prepend_bos=bos)
    ctx = ctx[:8]
    assert store.identity["kept_positions"] == kept and len(store) == 8 * len(kept)
    grid = torch.tensor([[c, p] for c in range(8) for p in kept])
    assert torch.equal(store.index[:], grid)
    assert torch.equal(store.tokens[:], ctx[:, kept].reshape(-1))
    if bos and 0 not in kept:
        assert model.tokenizer.bos_token_id not in store.tokens[:].tolist()
    want = expected(model, ctx, HOOKS, kept)
    for h in HOOKS:
        assert torch.equal(store[h][:], want[h]), h


def test_shuffled_harvest_records_the_order(model, tmp_path):
    store = run(model, tmp_path / "s", shuffle_seed=5, max_tokens=CTX * 10, hooks=HOOKS[:2])
    plain_numbers, plain = source_contexts(model, DOCS)
    numbers, shuffled = source_contexts(model, DOCS, shuffle_seed=5)
    assert plain_numbers == list(range(len(plain))) and numbers[:10] != list(range(10))
    kept = store.identity["kept_positions"]
    index = store.index[:].reshape(10, len(kept), 2)
    assert index[:, :, 0].eq(torch.tensor(numbers[:10])[:, None]).all()  # the source context of every row
    assert torch.equal(store.tokens[:].reshape(10, -1), plain[numbers[:10]][:, kept])
    want = expected(model, shuffled[:10], HOOKS[:2], kept)
    for h in HOOKS[:2]:
        assert torch.equal(store[h][:], want[h]), h
    assert store.identity["shuffle_seed"] == 5


def test_max_tokens(model, tmp_path):
    store = run(model, tmp_path / "a", max_tokens=CTX * 5 + 7)  # whole contexts: 5
    assert store.manifest["store"]["contexts"] == 5 and len(store) == 5 * (CTX - 1)
    assert store.index[:][:, 0].unique().tolist() == [0, 1, 2, 3, 4]
    _, ctx = source_contexts(model, DOCS)
    everything = run(model, tmp_path / "b", max_tokens=10**9)  # more than the source holds: all of it
    assert everything.manifest["store"]["contexts"] == len(ctx)
    assert torch.equal(everything.tokens[: 5 * (CTX - 1)], store.tokens[:])


def test_longer_max_tokens_extends_the_store(model, tmp_path):
    """A second harvest with a larger max_tokens reuses the complete shards, redoes the short tail shard, and
    gives the same store as one harvest of that length."""
    kw = dict(shard_contexts=4, hooks=HOOKS[:2])
    run(model, tmp_path / "grown", max_tokens=CTX * 6, **kw)  # shards [0, 4), [4, 6)
    first = (tmp_path / "grown" / fmt.shard_name(0)).stat().st_mtime_ns
    grown = run(model, tmp_path / "grown", max_tokens=CTX * 11, **kw)
    fresh = run(model, tmp_path / "fresh", max_tokens=CTX * 11, **kw)
    assert (tmp_path / "grown" / fmt.shard_name(0)).stat().st_mtime_ns == first
    assert [r["contexts"] for r in grown.shards] == [[0, 4], [4, 8], [8, 11]]
    for k in range(3):
        assert (tmp_path / "grown" / fmt.shard_name(k)).read_bytes() == (
            tmp_path / "fresh" / fmt.shard_name(k)
        ).read_bytes()
    assert grown.manifest == fresh.manifest


def test_fixed_size_shards(model, tmp_path):
    store = run(model, tmp_path / "s", shard_contexts=3, max_tokens=CTX * 10)  # not a multiple of the batch
    kept = CTX - 1
    assert [r["contexts"] for r in store.shards] == [[0, 3], [3, 6], [6, 9], [9, 10]]
    assert [r["rows"] for r in store.shards] == [3 * kept, 3 * kept, 3 * kept, kept]
    _, ctx = source_contexts(model, DOCS)
    want = expected(model, ctx[:10], HOOKS, list(range(1, CTX)), shard=3)
    for k, record in enumerate(store.shards):
        tensors = load_file(str(tmp_path / "s" / fmt.shard_name(k)))  # safetensors' own reader
        assert set(tensors) == {*HOOKS, "tokens", "index"}
        lo = 3 * k * kept
        for h in HOOKS:
            assert torch.equal(tensors[h], want[h][lo : lo + record["rows"]]), (k, h)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(
        [fmt.MANIFEST, *(fmt.shard_name(k) for k in range(4)), *(fmt.record_name(k) for k in range(4))]
    )


def test_default_shard_size_follows_the_target_bytes(model, tmp_path, monkeypatch):
    hooks = ["blocks.1.hook_resid_post"]
    row = 128 * 4  # d_model float32
    store = run(model, tmp_path / "a", hooks=hooks, max_tokens=CTX * 20)
    assert store.identity["shard_contexts"] % BATCH == 0 and len(store.shards) == 1
    monkeypatch.setattr(harvest_module, "SHARD_TARGET_BYTES", row * (CTX - 1) * 9)  # 9 contexts: 8 whole batches
    store = run(model, tmp_path / "b", hooks=hooks, max_tokens=CTX * 20)
    assert store.identity["shard_contexts"] == 8
    assert [r["contexts"] for r in store.shards] == [[0, 8], [8, 16], [16, 20]]


# -- the manifest -----------------------------------------------------------------------------------
def test_manifest(model, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"f{i}.txt").write_text("".join(DOCS[i::3]), encoding="utf-8")
    out = tmp_path / "s"
    store = run(model, out, source=corpus, shard_contexts=4, max_tokens=CTX * 10)
    manifest = json.loads((out / fmt.MANIFEST).read_text())
    assert manifest == store.manifest
    assert manifest["lens"] == lens.__version__ and manifest["torch"] == torch.__version__
    assert manifest["numpy"] == np.__version__
    info = manifest["store"]
    assert info["format"] == fmt.FORMAT and info["version"] == fmt.VERSION and info["complete"] is True
    ident = info["identity"]
    assert ident["model"]["name"] == MODEL == manifest["model"]["name"]
    assert ident["model"]["weights_sha256"] == lens.repro.weights_sha256(model)
    cfg_json = json.dumps(dataclasses.asdict(model.cfg), sort_keys=True, default=str).encode()
    assert ident["model"]["config_sha256"] == hashlib.sha256(cfg_json).hexdigest()
    other = lens.zoo.load("attn-only-2l")
    assert harvest_module.config_sha256(other.cfg) != ident["model"]["config_sha256"]
    n_heads, d_head, d_model = model.cfg.n_heads, model.cfg.d_head, model.cfg.d_model
    assert ident["hooks"] == {
        "blocks.0.hook_resid_pre": {"shape": [d_model], "dtype": "float32"},
        "blocks.1.hook_mlp_out": {"shape": [d_model], "dtype": "float32"},
        "blocks.2.attn.hook_pattern": {"shape": [n_heads, CTX], "dtype": "float32"},
        "blocks.0.attn.hook_q": {"shape": [n_heads, d_head], "dtype": "float32"},
    }
    assert sorted(manifest["hooks"]) == sorted(HOOKS)
    files = sorted(corpus.iterdir())
    assert ident["source"] == {
        "kind": "text-files",
        "files": [
            {"name": p.name, "bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
            for p in files
        ],
    }
    assert ident["context_size"] == CTX and ident["prepend_bos"] is True and ident["shuffle_seed"] is None
    assert ident["batch_size"] == BATCH and ident["shard_contexts"] == 4 and ident["positions"] == "all"
    assert info["rows"] == len(store) == 10 * (CTX - 1) and info["contexts"] == 10
    assert len(info["shards"]) == 3
    for k, record in enumerate(info["shards"]):
        data = (out / fmt.shard_name(k)).read_bytes()
        assert record["file"] == fmt.shard_name(k) and record["bytes"] == len(data)
        assert record["sha256"] == hashlib.sha256(data).hexdigest()
        assert record == json.loads((out / fmt.record_name(k)).read_text())  # its completion record agrees
        assert load_file(str(out / fmt.shard_name(k)))["tokens"].shape[0] == record["rows"]


# -- re-runs and other stores in the folder -----------------------------------------------------------
def test_rerun_does_no_work_and_changes_nothing(model, tmp_path, monkeypatch):
    out = tmp_path / "s"
    kw = dict(shard_contexts=4, max_tokens=CTX * 10)
    run(model, out, **kw)
    before = snapshot(out)
    forwards = []
    handle = model.register_forward_pre_hook(lambda m, args: forwards.append(tuple(args[0].shape)))
    monkeypatch.setattr(fmt, "write_shard", lambda *a, **k: pytest.fail("a shard was rewritten"))
    try:
        run(model, out, **kw)
    finally:
        handle.remove()
    assert [s for s in forwards if s[-1] == CTX] == [], "the re-run computed contexts again"
    assert snapshot(out) == before  # same files, same bytes, same modification times


@pytest.mark.parametrize(
    "change, differs",
    [
        ("model", {"model"}),
        ("weights", {"model"}),
        ("hooks", {"hooks"}),
        ("source", {"source"}),
        ("context_size", {"context_size", "hooks", "kept_positions"}),  # the pattern's key axis is the context
        ("positions", {"positions", "kept_positions"}),
        ("batch_size", {"batch_size"}),
    ],
)
def test_another_harvest_in_the_folder_is_refused(model, tmp_path, change, differs):
    out = tmp_path / "s"
    hooks = ["blocks.0.hook_resid_pre", "blocks.1.attn.hook_pattern"]  # hooks the other zoo model has too
    kw = dict(max_tokens=CTX * 6, shard_contexts=4, hooks=hooks)
    run(model, out, **kw)
    before = snapshot(out)
    other = model
    if change == "model":
        other = lens.zoo.load("attn-only-2l")
    elif change == "weights":
        other = copy.deepcopy(model)
        with torch.no_grad():
            next(other.parameters()).view(-1)[0] += 1e-3
    elif change == "hooks":
        kw["hooks"] = hooks[:1]
    elif change == "source":
        kw["source"] = [*DOCS[:-1], DOCS[-1] + "!"]
    elif change == "context_size":
        kw["context_size"] = CTX * 2
    elif change == "positions":
        kw["positions"] = slice(0, 8)
    else:
        kw["batch_size"] = BATCH * 2
    with pytest.raises(lens.store.StoreError) as info:
        run(other, out, **kw)
    message = str(info.value)
    named = re.search(r"harvested with a different (.+?) \(stored: ", message)
    assert named and set(named.group(1).split(", ")) == differs, message
    assert str(out) in message and "another folder" in message
    assert snapshot(out) == before  # the store there is left as it was
    assert lens.store.verify(out) == []


# -- bad input fails before any compute -----------------------------------------------------------
BAD = [
    (dict(hooks=["blocks.0.hook_nope"]), ValueError, "blocks.0.hook_nope"),
    (dict(hooks=["blocks.9.hook_resid_post"]), ValueError, "blocks.9.hook_resid_post"),
    (dict(hooks=[]), TypeError, r"hooks=\[\]"),
    (dict(hooks=[3]), TypeError, r"hooks=\[3\]"),
    (dict(hooks=[HOOKS[0], HOOKS[0]]), ValueError, "twice"),
    (dict(context_size=0), ValueError, "context_size=0"),
    (dict(context_size=-4), ValueError, "context_size=-4"),
    (dict(context_size=257), ValueError, "context_size=257"),
    (dict(context_size=2.5), ValueError, "context_size=2.5"),
    (dict(batch_size=0), ValueError, "batch_size=0"),
    (dict(batch_size=-1), ValueError, "batch_size=-1"),
    (dict(batch_size=2.0), ValueError, "batch_size=2.0"),
    (dict(batch_size=True), ValueError, "batch_size=True"),
    (dict(dtype="int8"), ValueError, "dtype='int8'"),
    (dict(dtype=torch.int64), ValueError, "dtype=torch.int64"),
    (dict(dtype="float99"), ValueError, "dtype='float99'"),
    (dict(dtype=torch.float8_e4m3fn), ValueError, "dtype=torch.float8_e4m3fn"),
    (dict(dtype=torch.complex64), ValueError, "dtype=torch.complex64"),
    (dict(positions="first"), ValueError, "positions='first'"),
    (dict(positions=[1, 2]), ValueError, r"positions=\[1, 2\]"),
    (dict(positions=np.array([1, 2])), ValueError, r"positions=array\(\[1, 2\]\)"),
    (dict(positions=slice(0, 8, 0)), ValueError, r"positions=slice\(0, 8, 0\)"),
    (dict(positions=slice("a", None)), ValueError, r"positions=slice\('a'"),
    (dict(positions=slice(5, 2)), ValueError, r"positions=slice\(5, 2, None\)"),
    (dict(positions=slice(0, 1)), ValueError, "keeps no position"),  # only the BOS, which is excluded
    (dict(max_tokens=0), ValueError, "max_tokens=0"),
    (dict(max_tokens=CTX - 1), ValueError, f"max_tokens={CTX - 1}"),
    (dict(shard_contexts=0), ValueError, "shard_contexts=0"),
    (dict(shuffle_seed=-1), ValueError, "shuffle_seed=-1"),
    (dict(source=[b"bytes"]), TypeError, "bytes"),
    (dict(source=["text", 3]), TypeError, "int"),
]


@pytest.mark.parametrize("bad, error, named", BAD, ids=[str(b)[:40] for b, _, _ in BAD])
def test_bad_input_fails_before_compute(model, tmp_path, monkeypatch, bad, error, named):
    def no_compute(*args, **kwargs):
        pytest.fail("the model ran before the arguments were checked")

    monkeypatch.setattr(model, "forward", no_compute)
    monkeypatch.setattr(model, "run_with_cache", no_compute)
    kw = {"source": DOCS, "hooks": HOOKS, "context_size": CTX, "batch_size": BATCH, **bad}
    out = tmp_path / "s"
    with pytest.raises(error, match=named):
        lens.store.harvest(model, out_dir=out, progress=False, **kw)
    assert not out.exists(), "the store folder was created for a harvest that cannot run"


# -- models of other shapes -------------------------------------------------------------------------
def test_two_head_model_attention_pattern(tmp_path):
    """A model with 2 heads, no tokenizer and a token array: the pattern's head axis (2) is not the probe's
    key axis (2 positions), and nothing needs a BOS."""
    from tests.tiny import tiny_model

    small = tiny_model("gpt2", n_heads=2)
    ids = np.random.default_rng(0).integers(0, small.cfg.d_vocab, size=CTX * 9 + 3)
    hooks = ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_attn_scores", "blocks.1.hook_resid_post"]
    store = run(small, tmp_path / "s", source=ids, hooks=hooks, prepend_bos=False)
    assert store.identity["hooks"]["blocks.0.attn.hook_pattern"]["shape"] == [2, CTX]
    assert store.identity["source"]["kind"] == "token-array"
    ctx = torch.from_numpy(ids[: CTX * 9].reshape(9, CTX))
    kept = list(range(CTX))
    scores = {"blocks.1.attn.hook_attn_scores": None}
    want = expected(small, ctx, hooks, kept)
    for h in hooks:
        got = store[h][:]
        if h in scores:  # masked (future) scores are -inf on both sides
            assert torch.equal(got.isinf(), want[h].isinf())
            got, want[h] = got.nan_to_num(neginf=0), want[h].nan_to_num(neginf=0)
        assert torch.equal(got, want[h]), h
    assert torch.equal(store.tokens[:], ctx.reshape(-1))
