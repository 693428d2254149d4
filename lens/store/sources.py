"""Token sources for the activation store: text or token ids in, fixed-length contexts out, in a recorded order.

A source is a directory or list of text files, a file of token ids (``.npy`` or ``.safetensors``), a Python
iterable of strings, or a ``datasets.Dataset`` (when that library is installed). Documents are tokenised in
batches without BOS, joined with the tokenizer's EOS token (when it has one) and packed into contexts of
``context_size`` tokens, each starting with BOS when ``prepend_bos``; the tail that does not fill a context is
dropped. Context ``i`` is the ``i``-th context of that packing; ``shuffle_seed`` permutes the contexts with a
seeded generator (the token ids are then held in memory, 4 bytes per token). The same source, tokenizer and
settings always give the same contexts, which is what lets a harvest resume.

>>> src = TokenSource.from_any(["def f(x):\\n    return x\\n"] * 50, model.tokenizer, context_size=32)  # doctest: +SKIP
>>> next(iter(src.contexts())).shape                                                               # doctest: +SKIP
(32,)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TEXT_SUFFIXES = (".txt", ".py", ".md", ".json", ".jsonl", ".rst", ".c", ".h", ".js", ".html", ".csv", ".tex")
TOKEN_SUFFIXES = (".npy", ".safetensors")
_TOKENIZE_BATCH = 64


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _describe_file(p: Path) -> dict[str, Any]:
    """A file's part of the source description: its name (not its folder: a moved corpus is the same
    corpus), size and SHA-256."""
    return {"name": p.name, "bytes": p.stat().st_size, "sha256": _file_digest(p)}


def _text_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix in TEXT_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"token source {str(p)!r} is neither a file nor a directory")
    if not files:
        raise ValueError(f"token source {[str(p) for p in paths]} holds no text files (suffixes {TEXT_SUFFIXES})")
    return files


def _load_token_file(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        ids = np.load(path, mmap_mode="r")
    else:
        from safetensors.numpy import load_file

        tensors = load_file(str(path))
        if len(tensors) != 1 and "tokens" not in tensors:
            raise ValueError(f"{path} holds tensors {sorted(tensors)}; a token file needs one, or one named 'tokens'")
        ids = tensors.get("tokens", next(iter(tensors.values())))
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"token file {path} holds {ids.dtype} values; token ids must be integers")
    return ids


@dataclass
class TokenSource:
    """Contexts of ``context_size`` token ids from one source (see the module docstring).

    ``describe`` (kind, files, sizes, content hashes: JSON-ready) goes into the store's manifest; the harvest
    refuses to resume into a store whose source description differs."""

    kind: str
    describe: dict[str, Any]
    context_size: int
    prepend_bos: bool
    bos: int | None
    eos: int | None
    shuffle_seed: int | None = None
    _documents: Any = field(default=None, repr=False)  # () -> iterator of str, or None for token files
    _tokens: np.ndarray | None = field(default=None, repr=False)  # a 1-d array (token file) or 2-d (contexts)
    _tokenizer: Any = field(default=None, repr=False)

    @classmethod
    def from_any(
        cls,
        source: Any,
        tokenizer: Any,
        context_size: int,
        prepend_bos: bool = True,
        shuffle_seed: int | None = None,
    ) -> TokenSource:
        """Build the source for a path, list of paths, iterable of strings, token array or ``datasets.Dataset``.

        Raises ``ValueError``/``TypeError`` naming the bad value: a context size below 2, a tokenizer without a
        BOS token when ``prepend_bos``, a path that does not exist, a token file with floats, an empty source."""
        if isinstance(context_size, bool) or not isinstance(context_size, int) or context_size < 2:
            raise ValueError(f"context_size={context_size!r} must be an int >= 2")
        if shuffle_seed is not None and (
            isinstance(shuffle_seed, bool) or not isinstance(shuffle_seed, int) or shuffle_seed < 0
        ):
            raise ValueError(f"shuffle_seed={shuffle_seed!r} must be None or an int >= 0")
        bos = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None
        eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
        if prepend_bos and bos is None:
            raise ValueError("prepend_bos=True, but the tokenizer has no BOS token; pass prepend_bos=False")
        common = dict(context_size=context_size, prepend_bos=prepend_bos, bos=bos, eos=eos, shuffle_seed=shuffle_seed)
        if isinstance(source, (str, os.PathLike)):
            source = [source]
        if isinstance(source, np.ndarray) or type(source).__module__.startswith("torch"):
            ids = np.asarray(source).reshape(-1)
            digest = hashlib.sha256(np.ascontiguousarray(ids.astype(np.int64)).tobytes()).hexdigest()
            return cls("token-array", {"kind": "token-array", "tokens": int(ids.size), "sha256": digest},
                       _tokens=ids, **common)  # fmt: skip
        if isinstance(source, list) and source and all(isinstance(s, (str, os.PathLike)) for s in source):
            paths = [Path(s) for s in source]
            if all(p.suffix in TOKEN_SUFFIXES and _is_file(p) for p in paths):
                ids = np.concatenate([np.asarray(_load_token_file(p)).reshape(-1) for p in paths])
                desc = {"kind": "token-files", "files": [_describe_file(p) for p in paths]}
                return cls("token-files", desc, _tokens=ids, **common)
            if all(_exists(p) for p in paths):
                files = _text_files(paths)
                desc = {"kind": "text-files", "files": [_describe_file(p) for p in files]}
                _need_tokenizer(tokenizer, "text files")
                read = lambda: (p.read_text(encoding="utf-8", errors="replace") for p in files)  # noqa: E731
                return cls("text-files", desc, _documents=read, _tokenizer=tokenizer, **common)
            if all(_looks_like_path(s) for s in source):
                missing = [str(p) for p in paths if not _exists(p)]
                raise FileNotFoundError(
                    f"token source paths do not exist: {missing[:5]} (to read strings as text, pass a tuple)"
                )
        if _is_dataset(source):
            _need_tokenizer(tokenizer, "a datasets.Dataset")
            if "text" not in source.column_names:
                raise ValueError(f"the dataset has columns {source.column_names}; the store reads a 'text' column")
            fingerprint = getattr(source, "_fingerprint", None)
            desc = {"kind": "datasets", "rows": len(source), "fingerprint": fingerprint}
            return cls("datasets", desc, _documents=lambda: (row["text"] for row in source), _tokenizer=tokenizer,
                       **common)  # fmt: skip
        if isinstance(source, Iterable) and not isinstance(source, (bytes, dict)):
            texts = source if isinstance(source, (list, tuple)) else list(source)  # a generator is read once
            if not all(isinstance(t, str) for t in texts):
                bad = next(type(t).__name__ for t in texts if not isinstance(t, str))
                raise TypeError(f"an iterable token source must hold strings, found a {bad}")
            _need_tokenizer(tokenizer, "strings")
            digest = hashlib.sha256()
            for t in texts:
                digest.update(t.encode("utf-8", errors="surrogatepass") + b"\0")
            desc = {"kind": "strings", "documents": len(texts), "sha256": digest.hexdigest()}
            return cls("strings", desc, _documents=lambda: iter(texts), _tokenizer=tokenizer, **common)
        raise TypeError(
            f"unsupported token source {type(source).__name__}: give a directory or text files, a .npy/.safetensors "
            "file of token ids, a list of strings or a datasets.Dataset"
        )

    @property
    def body(self) -> int:
        """Source tokens per context (the context size less the BOS slot)."""
        return self.context_size - (1 if self.prepend_bos else 0)

    def _stream(self) -> Iterator[np.ndarray]:
        """The packed token stream, in pieces (1-d int64 arrays)."""
        if self._tokens is not None:
            yield np.asarray(self._tokens, dtype=np.int64)
            return
        batch: list[str] = []
        sep = [] if self.eos is None else [self.eos]

        def flush():
            ids, mask = self._tokenizer.encode_batch(batch, add_bos=False)
            for row, m in zip(ids.tolist(), mask.tolist(), strict=True):
                yield np.asarray([t for t, keep in zip(row, m, strict=True) if keep] + sep, dtype=np.int64)

        for text in self._documents():
            batch.append(text)
            if len(batch) == _TOKENIZE_BATCH:
                yield from flush()
                batch = []
        if batch:
            yield from flush()

    def _packed(self) -> Iterator[np.ndarray]:
        body, pending, held = self.body, [], 0
        for piece in self._stream():
            pending.append(piece)
            held += piece.size
            if held < body:
                continue
            flat = np.concatenate(pending)
            n = flat.size // body
            for i in range(n):
                yield self._with_bos(flat[i * body : (i + 1) * body])
            pending, held = [flat[n * body :]], flat.size - n * body

    def _with_bos(self, body: np.ndarray) -> np.ndarray:
        if self.prepend_bos:
            return np.concatenate([np.asarray([self.bos], dtype=np.int64), body])
        return body

    def contexts(self, start: int = 0, limit: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(context number, ids[context_size])`` from context ``start`` of the order on, at most ``limit`` of
        them. The number is the context's place in the unshuffled packing: with ``shuffle_seed`` the ``i``-th
        context yielded is context ``permutation[i]`` of the packing, and says so."""
        stop = None if limit is None else start + limit
        if self.shuffle_seed is None:
            for i, ctx in enumerate(self._packed()):
                if stop is not None and i >= stop:
                    return
                if i >= start:
                    yield i, ctx
            return
        every = self._all_contexts(stop)
        order = np.random.default_rng(self.shuffle_seed).permutation(len(every))
        for i in range(start, len(every) if stop is None else min(stop, len(every))):
            yield int(order[i]), every[order[i]]

    def _all_contexts(self, stop: int | None) -> np.ndarray:
        """Every context of the source: a shuffle permutes all of them (shuffling a prefix would change the
        order with ``max_tokens``)."""
        rows = list(self._packed())
        return np.stack(rows) if rows else np.zeros((0, self.context_size), dtype=np.int64)


def _need_tokenizer(tokenizer: Any, what: str) -> None:
    if tokenizer is None:
        raise ValueError(f"a token source of {what} needs a tokenizer; the model has none (model.set_tokenizer)")


def _exists(p: Path) -> bool:
    """``p.exists()``, False for a string that cannot be a path (too long a name, a NUL byte): a document."""
    try:
        return p.exists()
    except (OSError, ValueError):
        return False


def _is_file(p: Path) -> bool:
    try:
        return p.is_file()
    except (OSError, ValueError):
        return False


def _looks_like_path(s: str | os.PathLike) -> bool:
    """A path given by mistake rather than a document: a PathLike, or one line naming a folder or a known suffix."""
    if isinstance(s, os.PathLike):
        return True
    if "\n" in s or "\0" in s or len(s) > 4096:
        return False
    return os.sep in s or Path(s).suffix in TEXT_SUFFIXES + TOKEN_SUFFIXES


def _is_dataset(source: Any) -> bool:
    try:
        import datasets
    except ImportError:
        return False
    return isinstance(source, datasets.Dataset)
