"""The ``transformers``-tokenizer surface of :class:`lens.tokenizer.Tokenizer`.

Why: TransformerLens's ``model.tokenizer`` is a Hugging Face tokenizer, and notebooks call it directly
(``model.tokenizer(prompts, return_tensors="pt", padding=True)``, ``.decode``, ``.pad_token_id``, ...).
:class:`HFTokenizerMixin` gives lens's tokenizer those calls with Hugging Face's results for the same
``tokenizer.json`` (the backend's own post-processing applies when ``add_special_tokens=True``), and
:meth:`HFTokenizerMixin.from_hf` turns a ``transformers`` fast tokenizer into a lens one. Nothing here
imports ``transformers``.

Example::

    >>> tok = Tokenizer.byte_level()
    >>> batch = tok(["hi", "a"], padding=True, return_tensors="pt")
    >>> batch.input_ids.tolist(), batch["attention_mask"].tolist()
    ([[104, 105], [97, 258]], [[1, 1], [1, 0]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tokenizers
import torch

__all__ = ["BatchEncoding", "HFTokenizerMixin"]

VERY_LARGE_INTEGER = int(1e30)  # Hugging Face's "no limit" model_max_length
_PADDING = {True: "longest", "longest": "longest", "max_length": "max_length", False: None, "do_not_pad": None}
_TRUNCATION = {True: True, "longest_first": True, "only_first": True, False: False, "do_not_truncate": False}


class BatchEncoding(dict):
    """The dict ``tokenizer(...)`` returns: ``input_ids`` and ``attention_mask``, also as attributes.

    >>> enc = BatchEncoding(input_ids=[1, 2], attention_mask=[1, 1])
    >>> enc.input_ids, enc["attention_mask"]
    ([1, 2], [1, 1])
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no {name!r}; keys: {list(self)}") from None

    def to(self, device: str | torch.device) -> BatchEncoding:
        """Move tensor values to ``device`` (in place, as Hugging Face); returns self."""
        for key, value in self.items():
            if isinstance(value, torch.Tensor):
                self[key] = value.to(device)
        return self


def _check_side(name: str, value: Any) -> str:
    if value not in ("left", "right"):
        raise ValueError(f"{name} must be 'left' or 'right', got {value!r}")
    return value


class HFTokenizerMixin:
    """``transformers``-style calls on :class:`~lens.tokenizer.Tokenizer` (see the module docs).

    Needs the host's ``_backend`` (a ``tokenizers.Tokenizer`` or None for byte level), ``_bos``,
    ``_eos``, ``_pad``, ``_vocab_size``, ``decode`` and ``token_strings``.
    """

    _backend: tokenizers.Tokenizer | None
    _bos: int | None
    _eos: list[int]
    _pad: int | None
    _unk: int | None = None  # the declared unknown token (tokenizer_config / transformers), as Hugging Face
    _vocab_size: int
    _padding_side: str = "right"
    _truncation_side: str = "right"
    model_max_length: int = VERY_LARGE_INTEGER
    clean_up_tokenization_spaces: bool = False  # never taken from a config: transformers 4.x and 5.x disagree on BPE
    name_or_path: str = ""

    # -- construction from transformers -------------------------------------------------------------
    @classmethod
    def from_hf(cls, hf_tokenizer: Any):
        """A lens tokenizer equal to a ``transformers`` fast tokenizer (its ``backend_tokenizer`` copied).

        Special tokens come from the Hugging Face tokenizer; as TransformerLens's ``set_tokenizer``, a missing
        pad (or BOS) token becomes the EOS token. Slow (Python) tokenizers raise TypeError.

        >>> tok = Tokenizer.from_hf(AutoTokenizer.from_pretrained("gpt2"))  # doctest: +SKIP
        """
        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        if not isinstance(backend, tokenizers.Tokenizer):
            raise TypeError(
                f"{type(hf_tokenizer).__name__} is not a fast tokenizer (it has no backend_tokenizer); "
                "load it with use_fast=True (AutoTokenizer.from_pretrained(..., use_fast=True))"
            )
        backend = tokenizers.Tokenizer.from_str(backend.to_str())  # a copy: the caller's stays as it is
        eos = getattr(hf_tokenizer, "eos_token_id", None)
        bos = getattr(hf_tokenizer, "bos_token_id", None)
        pad = getattr(hf_tokenizer, "pad_token_id", None)
        tok = cls(
            backend,
            bos_token_id=bos if bos is not None else eos,
            eos_token_ids=[] if eos is None else [eos],
            pad_token_id=pad if pad is not None else eos,
        )
        tok._unk = getattr(hf_tokenizer, "unk_token_id", None)
        tok.padding_side = getattr(hf_tokenizer, "padding_side", "right")
        tok.truncation_side = getattr(hf_tokenizer, "truncation_side", "right")
        tok.model_max_length = int(getattr(hf_tokenizer, "model_max_length", VERY_LARGE_INTEGER))
        tok.name_or_path = str(getattr(hf_tokenizer, "name_or_path", ""))
        return tok

    # -- attributes ---------------------------------------------------------------------------------
    @property
    def padding_side(self) -> str:
        """Where ``__call__`` pads (``"right"`` by default; settable). A model's ``to_tokens`` pads left
        when either this or ``cfg.default_padding_side`` is ``"left"``."""
        return self._padding_side

    @padding_side.setter
    def padding_side(self, value: str) -> None:
        self._padding_side = _check_side("padding_side", value)

    @property
    def truncation_side(self) -> str:
        """Which end ``__call__`` truncates (``"right"`` by default; settable)."""
        return self._truncation_side

    @truncation_side.setter
    def truncation_side(self, value: str) -> None:
        self._truncation_side = _check_side("truncation_side", value)

    def __len__(self) -> int:
        """Size of the vocabulary including added tokens (Hugging Face's ``len(tokenizer)``)."""
        return self._vocab_size

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary, without added tokens (as Hugging Face; ``len(tok)`` counts them)."""
        return self._vocab_size if self._backend is None else self._backend.get_vocab_size(with_added_tokens=False)

    def _token(self, token_id: int | None) -> str | None:
        return None if token_id is None else self.convert_ids_to_tokens(token_id)

    @property
    def bos_token(self) -> str | None:
        return self._token(self._bos)

    @property
    def eos_token(self) -> str | None:
        return self._token(self._eos[0] if self._eos else None)

    @property
    def pad_token(self) -> str | None:
        return self._token(self._pad)

    @pad_token.setter
    def pad_token(self, token: str | None) -> None:
        """``tok.pad_token = tok.eos_token`` (a common notebook line) sets the pad id."""
        token_id = None if token is None else self._id_of(token)
        if token is not None and token_id is None:
            raise ValueError(f"pad_token {token!r} is not in the vocabulary; add it to the tokenizer first")
        self.pad_token_id = token_id

    @property
    def pad_token_id(self) -> int | None:
        return self._pad

    @pad_token_id.setter
    def pad_token_id(self, value: int | None) -> None:
        if value is not None and not 0 <= int(value) < self._vocab_size:
            raise ValueError(f"pad_token_id={value} is outside the vocabulary (size {self._vocab_size})")
        self._pad = None if value is None else int(value)

    @property
    def unk_token(self) -> str | None:
        """The declared unknown token (None unless the tokenizer's config names one, as Hugging Face)."""
        return self._token(self._unk)

    @property
    def unk_token_id(self) -> int | None:
        return self._unk

    @property
    def all_special_ids(self) -> list[int]:
        """The declared special tokens: BOS, EOS, UNK, PAD (as Hugging Face's, whatever else the backend marks)."""
        return list(dict.fromkeys(i for i in (self._bos, *self._eos, self._unk, self._pad) if i is not None))

    @property
    def all_special_tokens(self) -> list[str]:
        return self.convert_ids_to_tokens(self.all_special_ids)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        pairs = (("bos_token", self.bos_token), ("eos_token", self.eos_token), ("unk_token", self.unk_token))
        return {k: v for k, v in (*pairs, ("pad_token", self.pad_token)) if v is not None}

    # -- vocabulary ---------------------------------------------------------------------------------
    def _byte_token(self, i: int) -> str:
        return self.token_strings([i])[0] if i >= 256 else chr(i)  # bytes 128..255 as Latin-1 characters

    def get_vocab(self) -> dict[str, int]:
        """Token string -> id, added tokens included."""
        if self._backend is not None:
            return self._backend.get_vocab(with_added_tokens=True)
        return {self._byte_token(i): i for i in range(self._vocab_size)}

    @property
    def vocab(self) -> dict[str, int]:
        """Hugging Face's ``tokenizer.vocab``: :meth:`get_vocab`."""
        return self.get_vocab()

    @property
    def is_fast(self) -> bool:
        return True

    def _id_of(self, token: str) -> int | None:
        if self._backend is not None:
            return self._backend.token_to_id(token)
        return self.get_vocab().get(token)

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | None | list[int | None]:
        """Vocabulary lookup; an unknown token gives the unknown-token id (None without one), as Hugging Face."""
        if isinstance(tokens, str):
            found = self._id_of(tokens)
            return self.unk_token_id if found is None else found
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(
        self, ids: int | Sequence[int] | torch.Tensor, skip_special_tokens: bool = False
    ) -> str | list[str]:
        """Raw vocabulary strings (e.g. GPT-2's ``"Ġthe"``), not decoded text; see ``token_strings`` for text."""
        if isinstance(ids, int) or (isinstance(ids, torch.Tensor) and ids.ndim == 0):
            return self.convert_ids_to_tokens([int(ids)])[0]
        id_list = self._checked_ids(ids)
        if skip_special_tokens:
            special = set(self.all_special_ids)
            id_list = [i for i in id_list if i not in special]
        if self._backend is None:
            return [self._byte_token(i) for i in id_list]
        return [self._backend.id_to_token(i) for i in id_list]

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[str]:
        """The token strings ``text`` splits into (no special tokens unless asked), as Hugging Face."""
        return self.convert_ids_to_tokens(self._encode_one(text, add_special_tokens, None))

    # -- encoding -----------------------------------------------------------------------------------
    def _encode_one(self, text: str, add_special_tokens: bool, max_length: int | None) -> list[int]:
        """Ids of ``text``: the backend's post-processing iff ``add_special_tokens``; truncated to
        ``max_length`` tokens in all (special ones included) from ``truncation_side`` when given."""
        if not isinstance(text, str):
            raise TypeError(f"expected a str (or a list of str), got {type(text).__name__}")
        if self._backend is None:  # byte level: no post-processor, so no special tokens to add
            ids = list(text.encode("utf-8"))
            if max_length is not None:
                ids = ids[:max_length] if self._truncation_side == "right" else ids[max(0, len(ids) - max_length) :]
            return ids
        encoding = self._backend.encode(text, add_special_tokens=False)
        if max_length is not None:
            n_special = self._backend.num_special_tokens_to_add(False) if add_special_tokens else 0
            encoding.truncate(max(0, max_length - n_special), direction=self._truncation_side)
        return self._backend.post_process(encoding, None, add_special_tokens).ids

    def __call__(
        self,
        text: str | Sequence[str],
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_attention_mask: bool = True,
        padding_side: str | None = None,
    ) -> BatchEncoding:
        """Hugging Face's ``tokenizer(text, ...)``: a :class:`BatchEncoding` of ``input_ids`` (+ ``attention_mask``).

        ``padding``: False, True/"longest", "max_length" (pads with ``pad_token_id``; ValueError without one).
        ``truncation``: True/"longest_first" cuts to ``max_length`` (special tokens included); as Hugging
        Face, a ``max_length`` without padding truncates even when ``truncation`` is not given.
        ``return_tensors``: None (lists), "pt" (``[batch, pos]`` tensors; a str gives batch 1) or "np".

        >>> Tokenizer.byte_level()("hey", max_length=2).input_ids
        [104, 101]
        """
        if padding not in _PADDING:
            raise ValueError(f"padding must be one of {list(_PADDING)}, got {padding!r}")
        if truncation is not None and truncation not in _TRUNCATION:
            raise ValueError(f"truncation must be one of {list(_TRUNCATION)}, got {truncation!r}")
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be None, 'pt' or 'np', got {return_tensors!r}")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        side = _check_side("padding_side", padding_side or self._padding_side)
        pad_mode = _PADDING[padding]
        if pad_mode == "max_length" and max_length is None:
            raise ValueError("padding='max_length' needs max_length")
        if pad_mode is not None and self._pad is None:
            raise ValueError(
                "asking to pad but the tokenizer has no padding token; set one, e.g. tok.pad_token = tok.eos_token"
            )
        truncate = _TRUNCATION[truncation] if truncation is not None else (max_length is not None and not pad_mode)
        limit = (max_length if max_length is not None else self.model_max_length) if truncate else None
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        rows = [self._encode_one(t, add_special_tokens, limit) for t in texts]
        if pad_mode is not None and rows:
            width = max(len(r) for r in rows) if pad_mode == "longest" else max(max_length, *(len(r) for r in rows))
        else:
            width = None
        ids, mask = [], []
        for row in rows:
            fill = 0 if width is None else width - len(row)
            pad, ones = [self._pad] * fill, [1] * len(row)
            ids.append(row + pad if side == "right" else pad + row)
            mask.append(ones + [0] * fill if side == "right" else [0] * fill + ones)
        out = BatchEncoding(input_ids=ids)
        if return_attention_mask:
            out["attention_mask"] = mask
        if return_tensors is None:
            return BatchEncoding({k: v[0] for k, v in out.items()}) if single else out
        if len({len(r) for r in ids}) > 1:
            raise ValueError(
                "cannot build one tensor from sequences of different lengths; pass padding=True (or truncation)"
            )
        for key, value in out.items():
            tensor = torch.tensor(value, dtype=torch.long).reshape(len(value), -1 if value else 0)
            out[key] = tensor if return_tensors == "pt" else tensor.numpy()
        return out

    def encode_plus(self, text: str, **kwargs: Any) -> BatchEncoding:
        """``__call__`` on one text (Hugging Face's older name)."""
        return self(text, **kwargs)

    def batch_encode_plus(self, texts: Sequence[str], **kwargs: Any) -> BatchEncoding:
        """``__call__`` on a list of texts (Hugging Face's older name)."""
        return self(list(texts), **kwargs)

    # -- decoding -----------------------------------------------------------------------------------
    def batch_decode(
        self,
        sequences: Sequence[Sequence[int]] | torch.Tensor,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> list[str]:
        """``decode`` of each row of a ``[batch, pos]`` tensor or a list of id lists."""
        if isinstance(sequences, torch.Tensor) and sequences.ndim != 2:
            raise ValueError(f"batch_decode expects 2-D ids, got shape {tuple(sequences.shape)}")
        return [
            self.decode(
                row, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=clean_up_tokenization_spaces
            )
            for row in sequences
        ]

    def _clean_up(self, text: str, clean_up: bool | None) -> str:
        """Hugging Face's ``clean_up_tokenization`` (spaces before punctuation and contractions), when on."""
        if not (self.clean_up_tokenization_spaces if clean_up is None else clean_up):
            return text
        for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't")):
            text = text.replace(before, after)
        for suffix in ("'m", "'s", "'ve", "'re"):
            text = text.replace(" " + suffix, suffix)
        return text
