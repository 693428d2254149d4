"""lens.store.open and what it returns: columns, tokens and index, the training stream, statistics.

The oracle for every read is the whole store loaded here with safetensors' own loader (shard after shard,
concatenated), for the index and tokens the source's contexts, and for statistics numpy on the whole column."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lens
import lens.store
from lens.store import shards as fmt
from lens.store.sources import TokenSource

CTX, BATCH, SHARD = 16, 4, 3
N_CONTEXTS = 11  # shards of 3, 3, 3 and 2 contexts
KEPT = CTX - 1  # position 0 (BOS) is not stored
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern"]
DOCS = [f"text {i}: " + "lorem ipsum dolor sit amet, " * (i % 4 + 1) for i in range(20)]


@pytest.fixture(scope="module")
def model():
    return lens.zoo.load("attn-only-2l")


def _harvest(model, out, **kw):
    lens.store.harvest(model, DOCS, hooks=HOOKS, context_size=CTX, batch_size=BATCH, out_dir=out,
                       max_tokens=CTX * N_CONTEXTS, shard_contexts=SHARD, progress=False, **kw)  # fmt: skip
    return lens.store.open(out)


@pytest.fixture(scope="module")
def store(model, tmp_path_factory) -> lens.store.Store:
    return _harvest(model, tmp_path_factory.mktemp("reader") / "store")


@pytest.fixture(scope="module")
def full(store) -> dict[str, torch.Tensor]:
    """Every stored tensor, read with safetensors.torch.load_file and concatenated in shard order."""
    shards = [load_file(str(store.folder / fmt.shard_name(k))) for k in range(len(store.shards))]
    return {name: torch.cat([s[name] for s in shards]) for name in [*HOOKS, "tokens", "index"]}


def source_contexts(model, **kw) -> tuple[list[int], torch.Tensor]:
    pairs = list(TokenSource.from_any(DOCS, model.tokenizer, CTX, **kw).contexts())
    return [n for n, _ in pairs], torch.stack([torch.from_numpy(c) for _, c in pairs])


def rows_of(batches, name="index") -> torch.Tensor:
    return torch.cat([b[name] for b in batches])


def as_keys(index: torch.Tensor) -> list[tuple[int, int]]:
    return [tuple(r) for r in index.tolist()]


# -- the layout --------------------------------------------------------------------------------------
def test_length_shapes_and_dtypes(store, model, full):
    assert len(store.shards) == 4 and [r["rows"] for r in store.shards] == [3 * KEPT] * 3 + [2 * KEPT]
    assert len(store) == N_CONTEXTS * KEPT == len(full["tokens"])
    assert store.hooks == HOOKS and all(h in store for h in HOOKS) and "blocks.0.hook_resid_pre" not in store
    assert store[HOOKS[0]].shape == (len(store), model.cfg.d_model)
    assert store[HOOKS[1]].shape == (len(store), model.cfg.n_heads, CTX)
    assert store[HOOKS[0]].dtype == torch.float32 and len(store[HOOKS[1]]) == len(store)
    assert store.tokens.shape == (len(store),) and store.index.shape == (len(store), 2)
    assert HOOKS[0] in repr(store) and "rows=165" in repr(store)


# -- indexing ------------------------------------------------------------------------------------------
ROWS = 11 * KEPT  # 165
INTS = [0, 1, 3 * KEPT - 1, 3 * KEPT, 3 * KEPT + 1, ROWS - 1, -1, -ROWS, -3 * KEPT, np.int64(50)]
SLICES = [
    slice(None),
    slice(0, 10),
    slice(40, 50),
    slice(44, 46),
    slice(10, 150),
    slice(-20, None),
    slice(None, -100),
    slice(None, None, 7),
    slice(3, 160, 44),
    slice(100, 10, -3),
    slice(None, None, -1),
    slice(5, 5),
    slice(50, 10),
    slice(150, 1000),
    slice(-1000, 3),
    slice(ROWS, None),
]
LISTS = [[0, 164, 45, 44, 3, 3], [-1, 0, -165], np.array([90, 2, 140]), torch.tensor([7, 100, 45]), [], [12]]


@pytest.mark.parametrize("name", [*HOOKS, "tokens", "index"])
def test_int_slice_and_list_indexing_equal_the_full_tensor(store, full, name):
    column = getattr(store, name) if name in ("tokens", "index") else store[name]
    want = full[name]
    for i in INTS:
        assert torch.equal(column[i], want[int(i)]), i
    for s in SLICES:
        got = column[s]
        assert got.shape[0] == len(range(*s.indices(ROWS))), s
        assert torch.equal(got, want[torch.from_numpy(np.arange(ROWS)[s].copy())]), s  # (numpy: negative steps)
    for rows in LISTS:
        got = column[rows]
        assert torch.equal(got, want[torch.as_tensor(rows, dtype=torch.long)]), rows
    assert torch.equal(column[:], want)


def test_numpy_and_reads_after_reopening(store, full):
    np.testing.assert_array_equal(store[HOOKS[0]].numpy(), full[HOOKS[0]].numpy())
    again = lens.store.open(store.folder, verify=False)
    assert torch.equal(again[HOOKS[1]][30:70], full[HOOKS[1]][30:70])


def test_bad_indices(store):
    column = store[HOOKS[0]]
    for i in (ROWS, -ROWS - 1, 10**6):
        with pytest.raises(IndexError, match=str(i)):
            column[i]
    with pytest.raises(IndexError, match=f"{ROWS} rows"):
        column[[0, ROWS]]
    with pytest.raises(TypeError, match="int, a slice or a 1-d list"):
        column[torch.ones(ROWS, dtype=torch.bool)]
    with pytest.raises(TypeError, match="int, a slice or a 1-d list"):
        column[[[0, 1], [2, 3]]]
    for key in ([0.5], (slice(None), 0), "rows"):
        with pytest.raises(TypeError, match="int, a slice or a 1-d list"):
            column[key]


def test_unknown_hook_is_named(store):
    for read in (lambda: store["blocks.0.hook_nope"], lambda: store.stats("blocks.0.hook_nope"),
                 lambda: store.stream(hooks=["blocks.0.hook_nope"])):  # fmt: skip
        with pytest.raises(KeyError, match=r"blocks\.0\.hook_nope.*" + HOOKS[0]):
            read()


# -- tokens and index ----------------------------------------------------------------------------------
def test_tokens_and_index_agree_with_the_source(store, model):
    numbers, ctx = source_contexts(model)
    index = store.index[:]
    assert torch.equal(index, torch.tensor([[c, p] for c in range(N_CONTEXTS) for p in range(1, CTX)]))
    assert torch.equal(store.tokens[:], ctx[index[:, 0], index[:, 1]])
    # and the activations of a row are those of its context at its position
    _, cache = model.run_with_cache(ctx[4:8], names_filter=HOOKS)
    row = int(((index[:, 0] == 6) & (index[:, 1] == 9)).nonzero())
    assert torch.equal(store[HOOKS[0]][row], cache[HOOKS[0]][2, 9])
    assert torch.equal(store[HOOKS[1]][row], cache[HOOKS[1]][2, :, 9])


def test_shuffled_store_index_names_each_rows_source_context(model, tmp_path):
    shuffled = _harvest(model, tmp_path / "s", shuffle_seed=11)
    plain_numbers, plain = source_contexts(model)
    numbers, _ = source_contexts(model, shuffle_seed=11)
    index = shuffled.index[:]
    contexts_in_order = index[::KEPT, 0].tolist()
    assert contexts_in_order == numbers[:N_CONTEXTS] and contexts_in_order != list(range(N_CONTEXTS))
    assert torch.equal(shuffled.tokens[:], plain[index[:, 0], index[:, 1]])  # the unshuffled source, looked up


# -- the stream -----------------------------------------------------------------------------------------
def test_stream_in_order_is_the_store(store, full):
    batches = list(store.stream(batch_size=50, shuffle=False))
    assert [len(b["tokens"]) for b in batches] == [50, 50, 50, 15]
    assert set(batches[0]) == {*HOOKS, "tokens", "index"}
    for name in [*HOOKS, "tokens", "index"]:
        assert torch.equal(rows_of(batches, name), full[name]), name
    assert len(store.stream(batch_size=50, shuffle=False)) == 4
    only = list(store.stream(hooks=HOOKS[1], batch_size=ROWS, shuffle=False))
    assert len(only) == 1 and set(only[0]) == {HOOKS[1], "tokens", "index"}


def test_shuffled_stream_covers_every_row_once_and_is_seeded(store, full):
    stream = store.stream(batch_size=32, shuffle=True, seed=3, shards_in_buffer=2)
    a = list(stream)
    assert len(a) == len(stream)
    index = rows_of(a)
    assert sorted(as_keys(index)) == sorted(as_keys(full["index"]))  # every row once
    position = {k: i for i, k in enumerate(as_keys(full["index"]))}
    for batch in a:  # every row's values travel with it
        rows = torch.tensor([position[k] for k in as_keys(batch["index"])])
        for name in [*HOOKS, "tokens"]:
            assert torch.equal(batch[name], full[name][rows]), name
    assert torch.equal(rows_of(list(store.stream(batch_size=32, shuffle=True, seed=3, shards_in_buffer=2))), index)
    assert not torch.equal(rows_of(list(store.stream(batch_size=32, shuffle=True, seed=4, shards_in_buffer=2))), index)
    stream.set_epoch(1)
    assert not torch.equal(rows_of(list(stream)), index)  # another epoch, another order
    assert not torch.equal(index, full["index"])
    shard_of = lambda idx: (idx[:, 0] // SHARD).unique().numel()  # noqa: E731
    assert any(shard_of(b["index"]) > 1 for b in a), "no batch mixes rows of two shards"


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("shuffle", [False, True])
def test_ranks_get_disjoint_parts_that_make_the_whole(store, full, world_size, shuffle):
    parts = []
    for rank in range(world_size):
        stream = store.stream(batch_size=16, shuffle=shuffle, seed=2, rank=rank, world_size=world_size)
        batches = list(stream)
        assert len(batches) == len(stream)
        parts.append(as_keys(rows_of(batches)))
    assert all(parts), "a rank got nothing"
    everything = [k for p in parts for k in p]
    assert len(everything) == len(set(everything)) == len(store)
    assert set(everything) == set(as_keys(full["index"]))


def test_drop_last(store):
    batches = list(store.stream(batch_size=50, shuffle=True, seed=0, drop_last=True))
    assert [len(b["tokens"]) for b in batches] == [50, 50, 50]
    assert len(store.stream(batch_size=50, drop_last=True)) == 3


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader(store, full, workers):
    stream = store.stream(hooks=HOOKS[0], batch_size=20, shuffle=True, seed=1)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    index = rows_of(list(loader))
    assert sorted(as_keys(index)) == sorted(as_keys(full["index"]))


def test_bad_stream_settings(store):
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=f"batch_size={bad!r}"):
            store.stream(batch_size=bad)
    with pytest.raises(ValueError, match="rank=2"):
        store.stream(rank=2, world_size=2)


# -- statistics --------------------------------------------------------------------------------------
@pytest.mark.parametrize("hook", HOOKS)
def test_stats_equal_numpy_on_the_whole_column(store, full, hook):
    stats = store.stats(hook)
    x = full[hook].double().numpy()
    assert stats["rows"] == len(x) == len(store)
    np.testing.assert_allclose(stats["mean"].numpy(), x.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(stats["std"].numpy(), x.std(0), rtol=1e-6, atol=1e-9)
    norms = np.linalg.norm(x.reshape(len(x), -1), axis=1)
    np.testing.assert_allclose(stats["norm_mean"], norms.mean(), rtol=1e-10)
    assert stats["mean"].shape == full[hook].shape[1:]


def test_bf16_store_reads_and_stats(model, tmp_path):
    store = _harvest(model, tmp_path / "bf16", dtype=torch.bfloat16)
    tensors = [load_file(str(store.folder / fmt.shard_name(k)))[HOOKS[0]] for k in range(len(store.shards))]
    want = torch.cat(tensors)
    assert want.dtype == torch.bfloat16 and torch.equal(store[HOOKS[0]][:], want)
    assert torch.equal(store[HOOKS[0]][[3, 100, 60]], want[[3, 100, 60]])
    np.testing.assert_array_equal(store[HOOKS[0]].numpy(), want.float().numpy())
    np.testing.assert_allclose(store.stats(HOOKS[0])["mean"].numpy(), want.double().numpy().mean(0), rtol=1e-10)


# -- opening --------------------------------------------------------------------------------------------
def test_open_refuses_what_is_not_a_complete_store(store, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        lens.store.open(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(lens.store.StoreError, match="no manifest.json"):
        lens.store.open(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    manifest = json.loads((store.folder / fmt.MANIFEST).read_text())
    manifest["store"]["version"] = 99
    (tmp_path / "other" / fmt.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(lens.store.StoreError, match="v99"):
        lens.store.open(tmp_path / "other")
    (tmp_path / "other" / fmt.MANIFEST).write_text("{not json")
    with pytest.raises(lens.store.StoreError, match="not a lens activation store"):
        lens.store.open(tmp_path / "other")
