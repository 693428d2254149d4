"""Token sources of the activation store (lens.store.sources): every kind of source packed into contexts.

The oracle is a packing written here from the tokenizer's own output: each document tokenised alone (the byte
tokenizer: its UTF-8 bytes; a ``tokenizers`` word-level tokenizer: its ``encode`` without special tokens),
followed by EOS, all joined, cut into bodies of ``context_size - 1`` tokens (``context_size`` without BOS), each
prefixed with BOS, the tail that does not fill a body dropped."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import lens
from lens.store.sources import TokenSource

BYTES = lens.Tokenizer.byte_level()
BOS, EOS = 256, 257
CTX = 12
DOCS = [f"doc {i}: " + "ab, c/d é " * (i % 4 + 1) + "\n" for i in range(23)]


def pack(docs: list[list[int]], context_size: int, bos: int | None, eos: int | None = None) -> np.ndarray:
    """The oracle packing (see the module docstring)."""
    flat = [t for ids in docs for t in [*ids, *([] if eos is None else [eos])]]
    body = context_size - (bos is not None)
    rows = [([] if bos is None else [bos]) + flat[i * body : (i + 1) * body] for i in range(len(flat) // body)]
    return np.asarray(rows, dtype=np.int64).reshape(-1, context_size)


def byte_ids(texts: list[str]) -> list[list[int]]:
    return [list(t.encode("utf-8")) for t in texts]


def contexts(src: TokenSource, *args) -> tuple[list[int], np.ndarray]:
    numbers, rows = [], []
    for n, ctx in src.contexts(*args):
        assert isinstance(ctx, np.ndarray) and ctx.shape == (src.context_size,) and ctx.dtype == np.int64
        numbers.append(n)
        rows.append(ctx)
    return numbers, np.stack(rows) if rows else np.zeros((0, src.context_size), dtype=np.int64)


def sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


@pytest.fixture
def text_dir(tmp_path) -> Path:
    """A folder of text files (one in a subfolder) and a file the source must skip (not a text suffix)."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "b.txt").write_text(DOCS[0] * 3, encoding="utf-8")
    (root / "a.py").write_text("def f(x):\n    return x / 2\n" * 4, encoding="utf-8")
    (root / "sub" / "c.md").write_text("# héading\n" + DOCS[1] * 5, encoding="utf-8")
    (root / "skip.bin").write_bytes(b"\x00\x01 not text " * 50)
    return root


@pytest.fixture(scope="module")
def word_tokenizer():
    """A lens tokenizer over a ``tokenizers`` word-level backend (BOS 0, EOS 1, PAD 2), and the raw backend."""
    tokenizers = pytest.importorskip("tokenizers")
    words = sorted({w for d in DOCS for w in d.replace(":", " ").replace(",", " ").split()})
    vocab = {"<s>": 0, "</s>": 1, "<pad>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    raw = tokenizers.Tokenizer.from_str(backend.to_str())
    return lens.Tokenizer(backend, bos_token_id=0, eos_token_ids=[1], pad_token_id=2), raw


# -- every kind of source ---------------------------------------------------------------------------
def test_directory_of_text_files(text_dir):
    src = TokenSource.from_any(text_dir, BYTES, CTX)
    files = [text_dir / "a.py", text_dir / "b.txt", text_dir / "sub" / "c.md"]  # sorted; skip.bin left out
    want = pack(byte_ids([p.read_text(encoding="utf-8") for p in files]), CTX, BOS, EOS)
    numbers, got = contexts(src)
    assert src.kind == "text-files" and len(want) > 10
    np.testing.assert_array_equal(got, want)
    assert numbers == list(range(len(want)))
    assert [f["name"] for f in src.describe["files"]] == ["a.py", "b.txt", "c.md"]
    for f, p in zip(src.describe["files"], files, strict=True):
        assert f["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest() and f["bytes"] == p.stat().st_size
    assert TokenSource.from_any(str(text_dir), BYTES, CTX).describe == src.describe  # str or Path


def test_list_of_text_files_keeps_the_given_order(text_dir):
    files = [text_dir / "sub" / "c.md", text_dir / "b.txt"]
    src = TokenSource.from_any([str(p) for p in files], BYTES, CTX)
    want = pack(byte_ids([p.read_text(encoding="utf-8") for p in files]), CTX, BOS, EOS)
    np.testing.assert_array_equal(contexts(src)[1], want)
    assert [f["name"] for f in src.describe["files"]] == ["c.md", "b.txt"]
    reverse = TokenSource.from_any(files[::-1], BYTES, CTX)
    assert reverse.describe != src.describe
    assert not np.array_equal(contexts(reverse)[1], want)


@pytest.mark.parametrize("prepend_bos", [True, False])
def test_npy_token_file(tmp_path, prepend_bos):
    ids = np.random.default_rng(0).integers(0, 250, size=(5, 41)).astype(np.int32)  # 2-d: read flat
    np.save(tmp_path / "ids.npy", ids)
    src = TokenSource.from_any(tmp_path / "ids.npy", BYTES, CTX, prepend_bos=prepend_bos)
    want = pack([ids.reshape(-1).tolist()], CTX, BOS if prepend_bos else None)  # no EOS inside a token file
    assert src.kind == "token-files" and len(want) == 205 // (CTX - prepend_bos)
    np.testing.assert_array_equal(contexts(src)[1], want)
    assert src.describe["files"][0]["sha256"] == hashlib.sha256((tmp_path / "ids.npy").read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["tokens", "ids"])
def test_safetensors_token_file(tmp_path, name):
    from safetensors.numpy import save_file

    ids = np.random.default_rng(1).integers(0, 250, size=100, dtype=np.int64)
    tensors = {name: ids} if name != "tokens" else {"tokens": ids, "other": np.zeros(3, dtype=np.int64)}
    save_file(tensors, str(tmp_path / "ids.safetensors"))
    src = TokenSource.from_any([tmp_path / "ids.safetensors"], BYTES, CTX)
    np.testing.assert_array_equal(contexts(src)[1], pack([ids.tolist()], CTX, BOS))


def test_bad_token_files(tmp_path):
    from safetensors.numpy import save_file

    save_file({"a": np.zeros(30, dtype=np.int64), "b": np.zeros(30, dtype=np.int64)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(ValueError, match="tokens"):
        TokenSource.from_any(tmp_path / "two.safetensors", BYTES, CTX)
    np.save(tmp_path / "floats.npy", np.zeros(30, dtype=np.float32))
    with pytest.raises(TypeError, match="float32"):
        TokenSource.from_any(tmp_path / "floats.npy", BYTES, CTX)


def test_several_token_files_are_joined_in_order(tmp_path):
    a, b = np.arange(30, dtype=np.int64), np.arange(100, 117, dtype=np.int64)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    src = TokenSource.from_any([tmp_path / "b.npy", tmp_path / "a.npy"], BYTES, CTX, prepend_bos=False)
    np.testing.assert_array_equal(contexts(src)[1], pack([b.tolist() + a.tolist()], CTX, None))


@pytest.mark.parametrize("wrap", [list, tuple, iter], ids=["list", "tuple", "generator"])
def test_iterable_of_strings(wrap):
    src = TokenSource.from_any(wrap(DOCS), BYTES, CTX)
    want = pack(byte_ids(DOCS), CTX, BOS, EOS)
    assert src.kind == "strings" and src.describe["documents"] == len(DOCS)
    np.testing.assert_array_equal(contexts(src)[1], want)
    np.testing.assert_array_equal(contexts(src)[1], want)  # a generator is read once, the contexts twice


def test_strings_that_are_not_paths():
    """Documents containing '/', names too long for a file system or a NUL byte are text, not missing paths."""
    docs = ["x = 1/2\n", "a/b/c", "y" * 5000, "nul\0byte", "see https://example.org/page"]
    src = TokenSource.from_any(docs, BYTES, CTX)
    assert src.kind == "strings"
    np.testing.assert_array_equal(contexts(src)[1], pack(byte_ids(docs), CTX, BOS, EOS))


def test_tokenizers_backend_batches_like_one_by_one(word_tokenizer):
    """More documents than one tokenising batch (64), of different lengths: padding never enters a context."""
    tok, raw = word_tokenizer
    docs = DOCS * 4
    src = TokenSource.from_any(docs, tok, CTX)
    want = pack([raw.encode(d, add_special_tokens=False).ids for d in docs], CTX, 0, 1)
    got = contexts(src)[1]
    np.testing.assert_array_equal(got, want)
    assert 2 not in got  # no PAD


def test_token_array_in_memory():
    ids = np.arange(90) % 250
    for source in (ids, torch.from_numpy(ids)):
        src = TokenSource.from_any(source, None, CTX, prepend_bos=False)
        assert src.kind == "token-array"
        np.testing.assert_array_equal(contexts(src)[1], pack([ids.tolist()], CTX, None))


def test_datasets_dataset():
    datasets = pytest.importorskip("datasets", reason="the datasets library is not installed")
    ds = datasets.Dataset.from_dict({"text": DOCS, "n": list(range(len(DOCS)))})
    src = TokenSource.from_any(ds, BYTES, CTX)
    assert src.kind == "datasets" and src.describe["rows"] == len(DOCS)
    np.testing.assert_array_equal(contexts(src)[1], pack(byte_ids(DOCS), CTX, BOS, EOS))
    other = datasets.Dataset.from_dict({"text": DOCS[::-1]})
    assert TokenSource.from_any(other, BYTES, CTX).describe != src.describe
    with pytest.raises(ValueError, match="'text' column"):
        TokenSource.from_any(datasets.Dataset.from_dict({"body": DOCS}), BYTES, CTX)


# -- packing ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("context_size", [2, 5, 64])
@pytest.mark.parametrize("prepend_bos", [True, False])
def test_packing_and_bos(context_size, prepend_bos):
    src = TokenSource.from_any(DOCS, BYTES, context_size, prepend_bos=prepend_bos)
    _, got = contexts(src)
    want = pack(byte_ids(DOCS), context_size, BOS if prepend_bos else None, EOS)
    np.testing.assert_array_equal(got, want)
    assert src.body == context_size - prepend_bos
    first = got[:, 0]
    assert (first == BOS).all() if prepend_bos else not (first == BOS).any()
    assert not (got[:, 1:] == BOS).any()  # BOS only at the start of a context, never inside
    total = sum(len(t.encode()) + 1 for t in DOCS)
    assert len(got) == total // (context_size - prepend_bos)  # only the tail that fills no context is dropped


def test_start_and_limit_window_the_contexts():
    src = TokenSource.from_any(DOCS, BYTES, CTX)
    numbers, every = contexts(src)
    n5, five = contexts(src, 3, 5)
    assert n5 == [3, 4, 5, 6, 7]
    np.testing.assert_array_equal(five, every[3:8])
    assert contexts(src, len(every) - 2)[0] == [len(every) - 2, len(every) - 1]
    assert contexts(src, 0, 0)[0] == []


# -- order, shuffling and fingerprints -------------------------------------------------------------
def test_same_source_twice_same_contexts_and_description(text_dir):
    a, b = (TokenSource.from_any(text_dir, BYTES, CTX) for _ in range(2))
    assert a.describe == b.describe
    np.testing.assert_array_equal(contexts(a)[1], contexts(b)[1])
    moved = shutil.copytree(text_dir, text_dir.parent / "moved")  # a moved corpus is the same corpus
    assert TokenSource.from_any(moved, BYTES, CTX).describe == a.describe


def test_seeded_shuffle():
    plain = TokenSource.from_any(DOCS, BYTES, CTX)
    _, ordered = contexts(plain)
    n1, s1 = contexts(TokenSource.from_any(DOCS, BYTES, CTX, shuffle_seed=1))
    n1b, s1b = contexts(TokenSource.from_any(DOCS, BYTES, CTX, shuffle_seed=1))
    n2, s2 = contexts(TokenSource.from_any(DOCS, BYTES, CTX, shuffle_seed=2))
    assert n1 == n1b and np.array_equal(s1, s1b)  # same seed, same order
    assert n1 != n2 and not np.array_equal(s1, s2)  # another seed, another order
    assert not np.array_equal(s1, ordered)
    for numbers, rows in ((n1, s1), (n2, s2)):  # a permutation of the same contexts: the numbers say which
        assert sorted(numbers) == list(range(len(ordered)))
        np.testing.assert_array_equal(rows, ordered[numbers])
        np.testing.assert_array_equal(sorted_rows(rows), sorted_rows(ordered))


def test_shuffled_window_is_a_slice_of_the_whole_shuffle():
    src = TokenSource.from_any(DOCS, BYTES, CTX, shuffle_seed=7)
    numbers, every = contexts(src)
    part_numbers, part = contexts(src, 2, 4)
    assert part_numbers == numbers[2:6]
    np.testing.assert_array_equal(part, every[2:6])


def test_fingerprint_follows_the_content(text_dir, tmp_path):
    before = TokenSource.from_any(text_dir, BYTES, CTX).describe
    path = text_dir / "b.txt"
    data = bytearray(path.read_bytes())
    data[5] ^= 1  # one bit of one file, same size
    path.write_bytes(bytes(data))
    after = TokenSource.from_any(text_dir, BYTES, CTX).describe
    assert after != before
    changed = [f["name"] for f, g in zip(after["files"], before["files"], strict=True) if f != g]
    assert changed == ["b.txt"]
    (text_dir / "a.py").rename(text_dir / "z.py")
    assert TokenSource.from_any(text_dir, BYTES, CTX).describe != after

    strings = TokenSource.from_any(DOCS, BYTES, CTX).describe
    assert TokenSource.from_any(DOCS, BYTES, CTX).describe == strings
    assert TokenSource.from_any([*DOCS[:-1], DOCS[-1] + "!"], BYTES, CTX).describe != strings
    assert TokenSource.from_any(DOCS[::-1], BYTES, CTX).describe != strings
    assert (
        TokenSource.from_any(["ab", "c"], BYTES, CTX).describe != TokenSource.from_any(["a", "bc"], BYTES, CTX).describe
    )

    ids = np.arange(60)
    np.save(tmp_path / "ids.npy", ids)
    tokens = TokenSource.from_any(tmp_path / "ids.npy", BYTES, CTX).describe
    ids[30] += 1
    np.save(tmp_path / "ids.npy", ids)
    assert TokenSource.from_any(tmp_path / "ids.npy", BYTES, CTX).describe != tokens
    array = TokenSource.from_any(np.arange(60), None, CTX, prepend_bos=False).describe
    assert TokenSource.from_any(ids, None, CTX, prepend_bos=False).describe != array


# -- bad sources and settings ------------------------------------------------------------------------
@pytest.mark.parametrize("context_size", [0, 1, -3, 2.5, True, "8"])
def test_bad_context_size(context_size):
    with pytest.raises(ValueError, match=f"context_size={context_size!r}"):
        TokenSource.from_any(DOCS, BYTES, context_size)


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_bad_shuffle_seed(seed):
    with pytest.raises(ValueError, match=f"shuffle_seed={seed!r}"):
        TokenSource.from_any(DOCS, BYTES, CTX, shuffle_seed=seed)


def test_bad_sources(tmp_path):
    no_bos = lens.Tokenizer(None, eos_token_ids=[257])
    with pytest.raises(ValueError, match="no BOS"):
        TokenSource.from_any(DOCS, no_bos, CTX)
    assert TokenSource.from_any(DOCS, no_bos, CTX, prepend_bos=False).bos is None
    with pytest.raises(ValueError, match="needs a tokenizer"):
        TokenSource.from_any(DOCS, None, CTX, prepend_bos=False)
    missing = tmp_path / "nowhere" / "x.txt"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        TokenSource.from_any(missing, BYTES, CTX)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        TokenSource.from_any([str(missing), str(missing.with_name("y.txt"))], BYTES, CTX)
    with pytest.raises(FileNotFoundError, match="pass a tuple"):  # every string reads as a path: ambiguous
        TokenSource.from_any(["1/2", "3/4"], BYTES, CTX)
    assert TokenSource.from_any(("1/2", "3/4"), BYTES, 4).kind == "strings"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "data.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="no text files"):
        TokenSource.from_any(tmp_path / "empty", BYTES, CTX)
    with pytest.raises(TypeError, match="int"):
        TokenSource.from_any(["text", 3], BYTES, CTX)
    with pytest.raises(TypeError, match="unsupported token source"):
        TokenSource.from_any(42, BYTES, CTX)
