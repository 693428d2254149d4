"""Hugging Face ``datasets`` helpers (``lens.utils.tokenize_and_concatenate`` & co.); ``datasets`` is optional.

``datasets`` is imported only inside these functions; without it they raise ImportError naming the extra
(``pip install 'lens[datasets]'``).

>>> ds = datasets.Dataset.from_dict({"text": ["a b c", "d e"]})          # doctest: +SKIP
>>> tokenize_and_concatenate(ds, model.tokenizer, max_length=8)["tokens"].shape   # doctest: +SKIP
torch.Size([n_rows, 8])
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

__all__ = ["get_dataset", "keep_single_column", "tokenize_and_concatenate"]

_INSTALL = "pip install 'lens[datasets]' (or pip install datasets)"

DATASET_ALIASES = {
    "openwebtext": "stas/openwebtext-10k",
    "owt": "stas/openwebtext-10k",
    "pile": "NeelNanda/pile-10k",
    "c4": "NeelNanda/c4-10k",
    "code": "NeelNanda/code-10k",
    "python": "NeelNanda/code-10k",
    "c4_code": "NeelNanda/c4-code-20k",
    "c4-code": "NeelNanda/c4-code-20k",
    "wiki": "NeelNanda/wiki-10k",
}
"""TransformerLens's short dataset names -> Hugging Face Hub datasets of ~10k texts (for :func:`get_dataset`)."""


def _require_datasets(caller: str) -> Any:
    try:
        import datasets
    except ImportError as e:
        raise ImportError(f"{caller} needs the optional `datasets` package: {_INSTALL}") from e
    return datasets


def keep_single_column(dataset: Any, col_name: str) -> Any:
    """The dataset with every column but ``col_name`` removed (to tokenize and mix texts).

    >>> keep_single_column(ds, "text").column_names   # doctest: +SKIP
    ['text']
    """
    names = list(getattr(dataset, "column_names", None) or [])
    if names and col_name not in names:
        raise ValueError(f"column {col_name!r} is not in the dataset; its columns are {names}")
    drop = [c for c in names if c != col_name]
    return dataset.remove_columns(drop) if drop else dataset


def _encoder(tokenizer: Any):
    """texts -> token id lists, without special tokens (no BOS per text)."""
    encode = getattr(tokenizer, "encode", None)
    if encode is not None and "add_bos" in inspect.signature(encode).parameters:  # a lens Tokenizer
        return lambda texts: [list(encode(t, add_bos=False)) for t in texts]
    if callable(tokenizer):  # a transformers tokenizer
        return lambda texts: [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    raise TypeError(f"expected a lens Tokenizer or a transformers tokenizer, got {type(tokenizer).__name__}")


def tokenize_and_concatenate(
    dataset: Any,
    tokenizer: Any,
    streaming: bool = False,
    max_length: int = 1024,
    column_name: str = "text",
    add_bos_token: bool = True,
    num_proc: int | None = 10,
) -> Any:
    """Tokenize a text dataset into rows of exactly ``max_length`` tokens (for training or loss evaluation).

    Within each ``datasets.map`` batch (1000 texts), texts are tokenized without special tokens, joined with
    the EOS id, cut into rows of ``max_length`` (``max_length - 1`` plus a BOS in front with
    ``add_bos_token``); the last partial row is dropped, unless the batch is shorter than one row, which is
    then padded (pad id, or EOS when the tokenizer has none). Returns a dataset with one column
    ``"tokens"`` in torch format. ``tokenizer``: a lens Tokenizer or a ``transformers`` tokenizer (with
    EOS, and BOS when ``add_bos_token``); it is not modified. ``num_proc`` is ignored when ``streaming``.

    >>> data = tokenize_and_concatenate(ds, model.tokenizer, max_length=128, num_proc=None)   # doctest: +SKIP
    >>> data["tokens"][:4]              # [4, 128] int64
    """
    _require_datasets("tokenize_and_concatenate")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < (2 if add_bos_token else 1):
        raise ValueError(f"max_length must be an int >= {2 if add_bos_token else 1}, got {max_length!r}")
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if eos_id is None:
        raise ValueError("tokenize_and_concatenate needs a tokenizer with an EOS token (it separates the texts)")
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if add_bos_token and bos_id is None:
        raise ValueError("add_bos_token=True, but the tokenizer has no BOS token")
    pad_id = getattr(tokenizer, "pad_token_id", None)
    fill_id = eos_id if pad_id is None else pad_id
    encode = _encoder(tokenizer)
    seq_len = max_length - 1 if add_bos_token else max_length

    def tokenize_batch(examples: Any) -> dict[str, np.ndarray]:
        texts = list(examples[column_name])
        if len(texts) <= 1 and not any(t.strip() for t in texts):
            return {"tokens": np.zeros((0, max_length), dtype=np.int64)}
        ids: list[int] = []
        for i, row in enumerate(encode(texts)):
            if i:
                ids.append(eos_id)
            ids.extend(row)
        flat = np.asarray(ids, dtype=np.int64)
        if len(flat) < seq_len:
            rows = np.concatenate([flat, np.full(seq_len - len(flat), fill_id, dtype=np.int64)])[None]
        else:
            n_rows = len(flat) // seq_len
            rows = flat[: n_rows * seq_len].reshape(n_rows, seq_len)
        if add_bos_token:
            rows = np.concatenate([np.full((rows.shape[0], 1), bos_id, dtype=np.int64), rows], axis=1)
        return {"tokens": rows}

    dataset = keep_single_column(dataset, column_name)
    kwargs: dict[str, Any] = {} if streaming else {"num_proc": num_proc}
    tokenized = dataset.map(tokenize_batch, batched=True, remove_columns=[column_name], **kwargs)
    if hasattr(tokenized, "set_format"):
        tokenized.set_format(type="torch", columns=["tokens"])
        return tokenized
    return tokenized.with_format("torch")


def get_dataset(dataset_name: str, **kwargs: Any) -> Any:
    """A ~10k-text Hugging Face dataset by TransformerLens's short name (``"pile"``, ``"c4"``, ``"code"``,
    ``"wiki"``, ``"openwebtext"``...; see :data:`DATASET_ALIASES`), split ``"train"``.

    Needs ``datasets`` and the Hub (or its local cache); ``kwargs`` go to ``datasets.load_dataset``.

    >>> get_dataset("pile")   # doctest: +SKIP
    """
    if dataset_name not in DATASET_ALIASES:
        raise ValueError(f"Dataset {dataset_name!r} not supported; choose one of {sorted(DATASET_ALIASES)}")
    datasets = _require_datasets("get_dataset")
    return datasets.load_dataset(DATASET_ALIASES[dataset_name], split="train", **kwargs)
