"""Tokenization: one small wrapper over two backends, plus the model-side helpers.

Why: interpretability code constantly converts between text, token ids and per-token strings
(``to_tokens``, ``to_str_tokens``, ...). Hugging Face tokenizers differ in whether they add BOS
themselves, which token pads, and how special tokens are declared. :class:`Tokenizer` hides that:
``encode`` never applies the backend's own post-processing, and BOS is added only when asked.

Backends:

* ``Tokenizer.byte_level()`` - built in, needs no files: ids 0..255 are raw UTF-8 bytes,
  256/257/258 are ``<|bos|>``/``<|eos|>``/``<|pad|>``. Handy for tests and toy models.
* ``Tokenizer.from_file(...)`` / ``Tokenizer.from_directory(...)`` - a ``tokenizers`` ``tokenizer.json``
  (as shipped with Hugging Face checkpoints), special tokens read from the config files beside it.
* ``Tokenizer.from_hf(hf_tokenizer)`` - a ``transformers`` fast tokenizer (its backend copied).

A :class:`Tokenizer` also answers the ``transformers`` calls notebooks make on ``model.tokenizer``
(``tok(texts, return_tensors="pt", padding=True)``, ``encode(text)`` with the backend's special tokens,
``batch_decode``, ``pad_token_id``, ``padding_side``, ...): :mod:`lens.tokenizer_hf`.

Example::

    >>> tok = Tokenizer.byte_level()
    >>> tok.encode("hi", add_bos=True)
    [256, 104, 105]
    >>> tok.decode([256, 104, 105])
    '<|bos|>hi'
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tokenizers
import torch
from jaxtyping import Int

from lens.provenance import bos_choice
from lens.tokenizer_hf import BatchEncoding, HFTokenizerMixin

__all__ = ["BatchEncoding", "Tokenizer", "TokenizerMixin", "choose_prepend_bos", "tokenizer_files"]

_BYTE_SPECIALS = {256: "<|bos|>", 257: "<|eos|>", 258: "<|pad|>"}
_NO_TOKENIZER = "this model has no tokenizer; pass token ids or attach one with model.set_tokenizer(...)"


def _read_chat_template(directory: Path, config: dict[str, Any]) -> str | dict[str, str] | None:
    """The chat template(s) of a tokenizer directory, as ``transformers`` reads them: ``chat_template.jinja``
    (which wins) or ``tokenizer_config.json``'s ``"chat_template"`` (a string, or a list of ``{"name",
    "template"}`` giving a dict), plus any ``additional_chat_templates/<name>.jinja``."""
    templates: dict[str, str] = {}
    value = config.get("chat_template")
    if isinstance(value, str):
        templates["default"] = value
    elif isinstance(value, list):
        templates.update({t["name"]: t["template"] for t in value if isinstance(t, dict) and "name" in t})
    file = directory / "chat_template.jinja"
    if file.is_file():
        templates["default"] = file.read_text(encoding="utf-8")
    extra = directory / "additional_chat_templates"
    if extra.is_dir():
        templates.update({f.stem: f.read_text(encoding="utf-8") for f in sorted(extra.glob("*.jinja"))})
    if not templates:
        return None
    return templates["default"] if list(templates) == ["default"] else templates


def _as_id_list(ids: Any) -> list[int]:
    """A flat list of Python ints from a list/tuple of ints or a 0-D/1-D tensor."""
    if isinstance(ids, torch.Tensor):
        if ids.ndim > 1:
            raise ValueError(f"expected a 1-D tensor of token ids, got shape {tuple(ids.shape)}")
        return [int(i) for i in ids.reshape(-1).tolist()]
    return [int(i) for i in ids]


def _post_processor_bos(backend: tokenizers.Tokenizer | None, bos: int | None) -> tuple[bool | None, str]:
    """Whether ``backend``'s post-processor (what ``encode(add_special_tokens=True)`` adds) puts BOS before the
    text: ``(True | False, why)``, or ``(None, why)`` when it says nothing about it (no post-processor, or one
    that adds a token other than BOS first)."""
    processor = None if backend is None else backend.post_processor
    if processor is None:
        return None, "tokenizer.json has no post-processor"
    try:
        data = json.loads(processor.__getstate__())
    except Exception:  # a processor the tokenizers library cannot serialise: read nothing into it
        return None, "tokenizer.json's post-processor could not be read"
    steps = data.get("processors", []) if data.get("type") == "Sequence" else [data]
    for step in steps:
        kind = step.get("type")
        if kind == "TemplateProcessing":
            specials, lead = step.get("special_tokens") or {}, []
            for piece in step.get("single") or []:
                if "SpecialToken" not in piece:
                    break
                lead.extend((specials.get(piece["SpecialToken"].get("id")) or {}).get("ids") or [])
        elif kind in ("BertProcessing", "RobertaProcessing"):
            lead = [step["cls"][1]] if isinstance(step.get("cls"), list) and len(step["cls"]) == 2 else []
        else:
            continue
        if not lead:
            return False, f"tokenizer.json's post-processor ({kind}) adds nothing before the text"
        if bos is not None and lead[0] == bos:
            return True, f"tokenizer.json's post-processor ({kind}) adds the BOS token (id {bos}) before the text"
        return None, f"tokenizer.json's post-processor ({kind}) adds id {lead[0]} first, which is not the BOS token"
    kinds = "+".join(str(step.get("type")) for step in steps)
    return False, f"tokenizer.json's post-processor ({kinds}) adds no special tokens"


def tokenizer_files(directory: str | Path) -> list[Path]:
    """The files :meth:`Tokenizer.from_directory` reads from ``directory`` (those that exist)."""
    directory = Path(directory)
    names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json", "chat_template.jinja")
    found = [directory / name for name in names if (directory / name).is_file()]
    extra = directory / "additional_chat_templates"
    return found + (sorted(extra.glob("*.jinja")) if extra.is_dir() else [])


def choose_prepend_bos(tokenizer: Tokenizer | None, family_default: bool, override: bool | None = None) -> dict:
    """How a loader sets ``cfg.default_prepend_bos``: ``{"value", "origin", "reason"}`` (see
    :mod:`lens.provenance`). An ``override`` (``from_pretrained(default_prepend_bos=...)``) wins; then what the
    tokenizer says (:attr:`Tokenizer.add_bos_token`: its ``add_bos_token`` setting or its post-processor); the
    family's convention ``family_default`` only when the tokenizer says nothing or there is none.

    >>> choose_prepend_bos(Tokenizer.byte_level(), family_default=True)["origin"]
    'family default'
    """
    if override is not None:
        if not isinstance(override, bool):
            raise TypeError(f"default_prepend_bos must be a bool or None, got {type(override).__name__} ({override!r})")
        return bos_choice(override, "override", f"default_prepend_bos={override} was passed when loading")
    said = None if tokenizer is None else tokenizer.add_bos_token
    if said is not None:
        return bos_choice(said, "tokenizer", tokenizer.add_bos_token_reason)
    why = "no tokenizer" if tokenizer is None else f"the tokenizer says nothing ({tokenizer.add_bos_token_reason})"
    return bos_choice(family_default, "family default", f"{why}, so the family's convention")


class Tokenizer(HFTokenizerMixin):
    """A uniform tokenizer: ``encode``/``decode``/``token_strings``/``encode_batch`` over either backend.

    Build one with :meth:`byte_level`, :meth:`from_file` or :meth:`from_directory` rather than directly.

    ``add_bos_token`` says whether the tokenizer itself puts BOS before a text (``tokenizer_config.json``'s
    ``add_bos_token``, else its ``tokenizer.json`` post-processor; for one made :meth:`from_hf`, what the
    ``transformers`` tokenizer does), None when it says nothing; ``add_bos_token_reason`` says why. Loaders
    set ``cfg.default_prepend_bos`` from it (:func:`choose_prepend_bos`). ``encode`` never reads it.

    Example::

        >>> tok = Tokenizer.byte_level()
        >>> tokens, mask = tok.encode_batch(["a", "abc"], add_bos=False, padding_side="left")
        >>> tokens.tolist(), mask.tolist()
        ([[258, 258, 97], [97, 98, 99]], [[0, 0, 1], [1, 1, 1]])
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer | None,
        *,
        bos_token_id: int | None = None,
        eos_token_ids: Sequence[int] = (),
        pad_token_id: int | None = None,
    ) -> None:
        self._backend = backend
        if backend is not None:
            # A saved tokenizer.json may carry truncation/padding settings that would silently alter encode().
            backend.no_truncation()
            backend.no_padding()
        self._vocab_size = 259 if backend is None else backend.get_vocab_size(with_added_tokens=True)
        eos = list(dict.fromkeys(int(i) for i in eos_token_ids))
        for name, value in (("bos", bos_token_id), ("pad", pad_token_id), *(("eos", i) for i in eos)):
            if value is not None and not 0 <= value < self._vocab_size:
                raise ValueError(f"{name}_token_id={value} is outside the vocabulary (size {self._vocab_size})")
        self._bos = bos_token_id
        self._eos = eos
        self._pad = pad_token_id
        # whether this tokenizer itself adds BOS (None: it says nothing) and why; loaders set
        # cfg.default_prepend_bos from it (choose_prepend_bos)
        self.add_bos_token, self.add_bos_token_reason = _post_processor_bos(backend, bos_token_id)
        if backend is None:
            self.add_bos_token_reason = "the byte-level tokenizer has no BOS setting"

    @classmethod
    def byte_level(cls) -> Tokenizer:
        """The built-in byte tokenizer: UTF-8 bytes 0..255, BOS=256, EOS=257, PAD=258 (vocab 259).

        >>> Tokenizer.byte_level().encode("é", add_bos=False)
        [195, 169]
        """
        return cls(None, bos_token_id=256, eos_token_ids=[257], pad_token_id=258)

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
    ) -> Tokenizer:
        """Wrap a ``tokenizers`` ``tokenizer.json``; special tokens are given by their strings.

        Raises ValueError if a named special token is not in the vocabulary.

        >>> tok = Tokenizer.from_file("gpt2/tokenizer.json", bos_token="<|endoftext|>")  # doctest: +SKIP
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        backend = tokenizers.Tokenizer.from_file(str(path))

        ids: dict[str, int | None] = {}
        for kind, token in (("bos", bos_token), ("eos", eos_token), ("pad", pad_token)):
            ids[kind] = None if token is None else backend.token_to_id(token)
            if token is not None and ids[kind] is None:
                raise ValueError(f"{kind}_token {token!r} is not in the vocabulary of {path}")
        eos = [] if ids["eos"] is None else [ids["eos"]]
        return cls(backend, bos_token_id=ids["bos"], eos_token_ids=eos, pad_token_id=ids["pad"])

    @classmethod
    def from_directory(cls, directory: str | Path) -> Tokenizer:
        """Load a Hugging Face-style tokenizer directory.

        Reads ``tokenizer.json`` (required) and, when present, ``tokenizer_config.json`` and
        ``special_tokens_map.json`` (``bos_token``/``eos_token``/``pad_token`` as strings or
        ``{"content": ...}`` dicts; the map wins, as in ``transformers``) and ``config.json``
        (``bos_token_id``/``eos_token_id``/``pad_token_id``; used when the token files name nothing).
        A list ``eos_token_id`` is kept whole in :attr:`eos_token_ids`. :attr:`add_bos_token` is
        ``tokenizer_config.json``'s ``add_bos_token`` when it is a bool, else what ``tokenizer.json``'s
        post-processor adds (None when there is no post-processor).

        >>> tok = Tokenizer.from_directory("checkpoints/llama")  # doctest: +SKIP
        """
        directory = Path(directory)
        tokenizer_file = directory / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(
                f"no tokenizer.json in {directory}; only the fast-tokenizer format of the `tokenizers` "
                "library is supported"
            )
        backend = tokenizers.Tokenizer.from_file(str(tokenizer_file))

        def read_json(name: str) -> dict[str, Any]:
            file = directory / name
            if not file.is_file():
                return {}
            data = json.loads(file.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}

        names: dict[str, Any] = {}
        for source in (read_json("tokenizer_config.json"), read_json("special_tokens_map.json")):
            for kind in ("bos", "eos", "pad"):
                value = source.get(f"{kind}_token")
                if isinstance(value, dict):
                    value = value.get("content")
                if isinstance(value, str):
                    names[kind] = value
        model_config, vocab = read_json("config.json"), backend.get_vocab_size(with_added_tokens=True)
        found: dict[str, list[int]] = {}
        for kind in ("bos", "eos", "pad"):
            value = model_config.get(f"{kind}_token_id")
            values = [int(v) for v in (value if isinstance(value, list) else [value]) if v is not None]
            if any(not 0 <= v < vocab for v in values):  # e.g. old LLaMA configs with pad_token_id=-1
                warnings.warn(f"ignoring out-of-vocab {kind}_token_id {value} in config.json", stacklevel=2)
                values = [v for v in values if 0 <= v < vocab]
            token = names.get(kind)
            token_id = None if token is None else backend.token_to_id(token)
            if token is not None and token_id is None:
                warnings.warn(f"{kind}_token {token!r} in {directory} is not in the vocabulary", stacklevel=2)
            found[kind] = values if token_id is None else [token_id, *values]
        bos, eos, pad = found["bos"], found["eos"], found["pad"]
        tok = cls(backend, bos_token_id=(bos or [None])[0], eos_token_ids=eos, pad_token_id=(pad or [None])[0])
        config = read_json("tokenizer_config.json")  # what transformers' AutoTokenizer would also read
        if isinstance(config.get("add_bos_token"), bool):  # the setting wins over the post-processor
            tok.add_bos_token = config["add_bos_token"]
            tok.add_bos_token_reason = f"tokenizer_config.json has add_bos_token={str(config['add_bos_token']).lower()}"
        unk = config.get("unk_token")
        unk = unk.get("content") if isinstance(unk, dict) else unk
        tok._unk = backend.token_to_id(unk) if isinstance(unk, str) else None
        if isinstance(config.get("model_max_length"), int):
            tok.model_max_length = config["model_max_length"]
        tok.chat_template = _read_chat_template(directory, config)
        tok._template_specials = {f"{kind}_token": token for kind, token in names.items()}
        if isinstance(unk, str):
            tok._template_specials["unk_token"] = unk
        return tok

    @property
    def bos_token_id(self) -> int | None:
        return self._bos

    @property
    def eos_token_id(self) -> int | None:
        """The primary EOS id (first of :attr:`eos_token_ids`), or None."""
        return self._eos[0] if self._eos else None

    @property
    def eos_token_ids(self) -> list[int]:
        """All ids that end a sequence (e.g. several for chat models); may be empty."""
        return list(self._eos)

    @property
    def padding_id(self) -> int:
        """The id used for padding: PAD if known, else EOS, else BOS, else 0 (masked out anyway)."""
        for candidate in (self._pad, self.eos_token_id, self._bos):
            if candidate is not None:
                return candidate
        return 0

    @property
    def is_byte_level(self) -> bool:
        """True for the built-in byte-level tokenizer (ids 0..255 are raw bytes)."""
        return self._backend is None

    def __repr__(self) -> str:
        kind = "byte_level" if self.is_byte_level else "tokenizers"
        specials = f"bos={self._bos}, eos={self._eos}, pad={self._pad}"
        return f"Tokenizer({kind}, vocab_size={self._vocab_size}, {specials})"

    def encode(
        self,
        text: str,
        add_bos: bool | None = None,
        *,
        add_special_tokens: bool = True,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        padding: bool | str = False,
        return_tensors: str | None = None,
    ) -> list[int] | torch.Tensor:
        """Token ids of ``text``, in one of two modes.

        * ``add_bos=True/False`` (lens): no backend post-processing, BOS prepended iff ``add_bos``.
        * ``add_bos`` not given (Hugging Face's ``encode``): the backend's post-processing (e.g. a BOS the
          ``tokenizer.json`` adds) iff ``add_special_tokens``; ``truncation``/``max_length``/``padding``/
          ``return_tensors`` as in ``__call__`` (``"pt"`` gives a ``[1, pos]`` tensor).

        >>> Tokenizer.byte_level().encode("ok", add_bos=True)
        [256, 111, 107]
        """
        if add_bos is None:
            kwargs = dict(truncation=truncation, max_length=max_length, padding=padding, return_tensors=return_tensors)
            return self(text, add_special_tokens=add_special_tokens, return_attention_mask=False, **kwargs)["input_ids"]
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        if add_bos and self._bos is None:
            raise ValueError("add_bos=True but this tokenizer has no BOS token; use add_bos=False")
        if self._backend is None:
            ids = list(text.encode("utf-8"))
        else:
            ids = self._backend.encode(text, add_special_tokens=False).ids
        return [self._bos, *ids] if add_bos else ids

    def encode_for_model(self, text: str, add_bos: bool) -> list[int]:
        """``encode(text, add_bos=False)`` with BOS prepended iff ``add_bos`` and the text does not already begin
        with it (a chat template's rendered BOS): what ``to_tokens`` / ``to_str_tokens`` use, so a rendered
        chat never gets a second BOS (Hugging Face's ``apply_chat_template(tokenize=True)`` adds none).

        >>> Tokenizer.byte_level().encode_for_model("hi", add_bos=True)
        [256, 104, 105]
        """
        ids = self.encode(text, add_bos=False)
        if add_bos and not (ids and ids[0] == self._bos):
            if self._bos is None:
                raise ValueError("add_bos=True but this tokenizer has no BOS token; use add_bos=False")
            ids = [self._bos, *ids]
        return ids

    def _special_ids(self) -> set[int]:
        return {i for i in (self._bos, self._pad, *self._eos) if i is not None}

    def _checked_ids(self, ids: Sequence[int] | torch.Tensor) -> list[int]:
        id_list = _as_id_list(ids)
        for i in id_list:
            if not 0 <= i < self._vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary (size {self._vocab_size})")
        return id_list

    def decode(
        self,
        ids: int | Sequence[int] | torch.Tensor,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> str:
        """Text of a sequence of ids (or of one id); BOS/EOS/PAD (and backend special tokens) dropped if asked.

        ``clean_up_tokenization_spaces=True`` (default: the attribute, False) removes spaces before punctuation
        as Hugging Face's ``clean_up_tokenization`` does.

        >>> Tokenizer.byte_level().decode([256, 104, 105], skip_special_tokens=True)
        'hi'
        """
        if isinstance(ids, int):
            ids = [ids]
        id_list = self._checked_ids(ids)
        if skip_special_tokens:
            specials = self._special_ids()
            id_list = [i for i in id_list if i not in specials]
        if self._backend is not None:
            text = self._backend.decode(id_list, skip_special_tokens=skip_special_tokens)
            return self._clean_up(text, clean_up_tokenization_spaces)
        pieces: list[str] = []
        buffer = bytearray()
        for i in id_list:
            if i < 256:
                buffer.append(i)
                continue
            pieces.append(buffer.decode("utf-8", errors="replace"))
            buffer.clear()
            if not skip_special_tokens:
                pieces.append(_BYTE_SPECIALS[i])
        pieces.append(buffer.decode("utf-8", errors="replace"))
        return self._clean_up("".join(pieces), clean_up_tokenization_spaces)

    def token_strings(self, ids: Sequence[int] | torch.Tensor) -> list[str]:
        """Each id decoded on its own (a partial UTF-8 character shows as U+FFFD).

        >>> Tokenizer.byte_level().token_strings([256, 104, 105])
        ['<|bos|>', 'h', 'i']
        """
        id_list = self._checked_ids(ids)
        if self._backend is not None:
            return self._backend.decode_batch([[i] for i in id_list], skip_special_tokens=False)
        return [self.decode([i]) for i in id_list]

    def encode_batch(
        self, texts: Sequence[str], add_bos: bool, padding_side: str = "right", max_length: int | None = None
    ) -> tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"]]:
        """Encode and pad several texts to one ``[batch, pos]`` tensor plus its attention mask.

        The mask is 1 on real tokens (BOS included) and 0 on padding (``padding_id``). ``max_length``
        keeps the first ``max_length`` tokens of each text (BOS included) before padding.

        >>> tok = Tokenizer.byte_level()
        >>> tokens, mask = tok.encode_batch(["ab", "a"], add_bos=True, padding_side="right")
        >>> tokens.tolist(), mask.tolist()
        ([[256, 97, 98], [256, 97, 258]], [[1, 1, 1], [1, 1, 0]])
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise ValueError("encode_batch needs at least one text")
        encoded = [self.encode_for_model(t, add_bos)[:max_length] for t in texts]
        length = max(len(ids) for ids in encoded)
        tokens = torch.full((len(encoded), length), self.padding_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), length), dtype=torch.long)
        for row, ids in enumerate(encoded):
            n = len(ids)
            if n == 0:
                continue
            cols = slice(0, n) if padding_side == "right" else slice(length - n, length)
            tokens[row, cols] = torch.tensor(ids, dtype=torch.long)
            mask[row, cols] = 1
        return tokens, mask


class TokenizerMixin:
    """Tokenization helpers for a model, with TransformerLens semantics.

    Needs ``self.tokenizer`` (a :class:`Tokenizer` or None) and ``self.cfg`` with ``device``,
    ``default_prepend_bos`` and ``default_padding_side`` (and optionally ``d_vocab``).

    Example::

        >>> model.set_tokenizer(Tokenizer.byte_level())  # doctest: +SKIP
        >>> model.to_str_tokens("hi")  # doctest: +SKIP
        ['<|bos|>', 'h', 'i']
    """

    tokenizer: Tokenizer | None
    cfg: Any

    def set_tokenizer(self, tokenizer: Any, default_padding_side: str | None = None) -> None:
        """Attach a tokenizer, checking that its ids fit in the model's embedding (``cfg.d_vocab``).

        ``tokenizer``: a :class:`Tokenizer` or a ``transformers`` fast tokenizer (converted with
        :meth:`Tokenizer.from_hf`, so ``model.tokenizer`` is always a lens ``Tokenizer``; the caller's object
        is not changed). ``default_padding_side`` (as TransformerLens) sets ``model.tokenizer.padding_side``.

        >>> model.set_tokenizer(AutoTokenizer.from_pretrained("gpt2"))  # doctest: +SKIP
        """
        if not isinstance(tokenizer, Tokenizer):
            if not any(c.__name__ == "PreTrainedTokenizerBase" for c in type(tokenizer).__mro__):
                raise TypeError(
                    f"expected a lens.tokenizer.Tokenizer or a transformers tokenizer, got {type(tokenizer).__name__}"
                )
            tokenizer = Tokenizer.from_hf(tokenizer)
        d_vocab = getattr(getattr(self, "cfg", None), "d_vocab", None)
        if d_vocab is not None and len(tokenizer) > d_vocab:
            raise ValueError(f"tokenizer vocab_size ({len(tokenizer)}) exceeds the model's d_vocab ({d_vocab})")
        if default_padding_side is not None:
            tokenizer.padding_side = default_padding_side
        self.tokenizer = tokenizer

    def _require_tokenizer(self) -> Tokenizer:
        tokenizer = getattr(self, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(_NO_TOKENIZER)
        return tokenizer

    def to_tokens(
        self,
        input: str | list[str],
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        move_to_device: bool = True,
        return_attention_mask: bool = False,
        truncate: bool = True,
    ) -> Int[torch.Tensor, "batch pos"] | tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"]]:
        """Text -> ``[batch, pos]`` token ids (a single string gives batch 1), padded if needed.

        ``prepend_bos`` defaults to ``cfg.default_prepend_bos`` (it adds no BOS to a text that already begins with
        one, e.g. a rendered chat template: see :meth:`Tokenizer.encode_for_model`); ``padding_side`` to ``"left"`` when
        ``cfg.default_padding_side`` or ``tokenizer.padding_side`` is ``"left"`` (TransformerLens reads the
        latter), else ``"right"``. ``truncate`` (as TransformerLens) keeps the first ``cfg.n_ctx`` tokens of each
        text; ``truncate=False`` returns them all (a forward then refuses more than ``n_ctx`` positions).

        >>> model.to_tokens(["hi", "hey"], padding_side="left")  # doctest: +SKIP
        """
        tokenizer = self._require_tokenizer()
        prepend_bos = self._resolve_bos(prepend_bos)
        if padding_side is None:
            sides = (getattr(self.cfg, "default_padding_side", "right"), getattr(tokenizer, "padding_side", "right"))
            padding_side = "left" if "left" in sides else sides[0]
        texts = [input] if isinstance(input, str) else list(input)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("to_tokens expects a string or a list of strings")
        max_length = getattr(self.cfg, "n_ctx", None) if truncate else None
        tokens, mask = tokenizer.encode_batch(
            texts, add_bos=bool(prepend_bos), padding_side=padding_side, max_length=max_length
        )
        device = getattr(self.cfg, "device", None)
        if move_to_device and device is not None:
            tokens, mask = tokens.to(device), mask.to(device)
        return (tokens, mask) if return_attention_mask else tokens

    def to_string(self, tokens: int | Sequence[int] | torch.Tensor | Any) -> str | list[str]:
        """Token ids -> text: one id (int or 0-D tensor) or 1-D ids give a str, 2-D gives one str per row.

        Lists, numpy arrays and lists of 1-D tensors are accepted (as TransformerLens); spaces are never
        cleaned up (TransformerLens passes ``clean_up_tokenization_spaces=False``).

        >>> model.to_string(torch.tensor([[104, 105]]))  # doctest: +SKIP
        ['hi']
        >>> model.to_string(104)  # doctest: +SKIP
        'h'
        """
        tokenizer = self._require_tokenizer()
        if isinstance(tokens, (list, tuple)) and tokens and all(isinstance(t, torch.Tensor) for t in tokens):
            tokens = torch.stack([t.reshape(-1) if t.ndim == 0 else t for t in tokens])
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        if tokens.ndim == 2:
            return [tokenizer.decode(row, clean_up_tokenization_spaces=False) for row in tokens.cpu()]
        if tokens.ndim <= 1:
            return tokenizer.decode(tokens.cpu().reshape(-1), clean_up_tokenization_spaces=False)
        raise ValueError(f"to_string expects 1-D or 2-D tokens, got shape {tuple(tokens.shape)}")

    def to_str_tokens(
        self,
        input: str | list[str] | list[int] | torch.Tensor,
        prepend_bos: bool | None = None,
    ) -> list[str] | list[list[str]]:
        """One string per token. Strings are tokenized first (``prepend_bos`` applies only to them).

        Accepts a str, a list of ints, a 1-D tensor or a ``[1, pos]`` tensor; a list of strings gives a
        list of such lists (as in TransformerLens).

        >>> model.to_str_tokens("hi")  # doctest: +SKIP
        ['<|bos|>', 'h', 'i']
        """
        tokenizer = self._require_tokenizer()
        if isinstance(input, list) and input and all(isinstance(s, str) for s in input):
            return [self.to_str_tokens(s, prepend_bos=prepend_bos) for s in input]
        if isinstance(input, str):
            ids = tokenizer.encode_for_model(input, add_bos=bool(self._resolve_bos(prepend_bos)))
        else:
            ids = _as_id_list(self._squeeze_batch(input, "to_str_tokens"))
        return tokenizer.token_strings(ids)

    def apply_chat_template(
        self,
        messages: Sequence[dict[str, Any]] | Sequence[Sequence[dict[str, Any]]],
        add_generation_prompt: bool = False,
        tokenize: bool = False,
        chat_template: str | None = None,
        padding_side: str | None = None,
        move_to_device: bool = True,
        **kwargs: Any,
    ) -> str | list[str] | Int[torch.Tensor, "batch pos"]:
        """A conversation (list of ``{"role", "content"}`` dicts) or a batch of them, rendered with the checkpoint's
        chat template (``tokenizer_config.json``'s ``"chat_template"`` or ``chat_template.jinja``; or
        ``chat_template=``), as ``transformers``' ``tokenizer.apply_chat_template``; see
        :meth:`Tokenizer.apply_chat_template` for the template's variables (``bos_token``, ``raise_exception``...).

        Returns the text (a str, or one per conversation), or with ``tokenize=True`` its ``[batch, pos]`` tokens
        with no BOS added beyond the template's own (padded as ``to_tokens``). ``model.generate(messages)`` renders
        with ``add_generation_prompt=True``.

        >>> model.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)  # doctest: +SKIP
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
        """
        text = self._require_tokenizer().apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False, chat_template=chat_template, **kwargs
        )
        if not tokenize:
            return text
        return self.to_tokens(text, prepend_bos=False, padding_side=padding_side, move_to_device=move_to_device)

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token (no BOS); ValueError otherwise.

        >>> model.to_single_token("a")  # doctest: +SKIP
        97
        """
        ids = self._require_tokenizer().encode(string, add_bos=False)
        if len(ids) != 1:
            raise ValueError(f"{string!r} is not a single token: it encodes to {len(ids)} tokens {ids}")
        return ids[0]

    def get_token_position(
        self,
        single_token: str | int,
        input: str | list[int] | torch.Tensor,
        mode: str = "first",
        prepend_bos: bool | None = None,
    ) -> int:
        """Index of the first (or last) occurrence of ``single_token`` in ``input``.

        ``input`` is a string (tokenized with ``prepend_bos``) or ids of shape ``[pos]``/``[1, pos]``.

        >>> model.get_token_position("a", "banana", mode="last")  # doctest: +SKIP
        6
        """
        if mode not in ("first", "last"):
            raise ValueError(f"mode must be 'first' or 'last', got {mode!r}")
        if isinstance(input, str):
            tokens = self._require_tokenizer().encode_for_model(input, add_bos=bool(self._resolve_bos(prepend_bos)))
        else:
            tokens = _as_id_list(self._squeeze_batch(input, "get_token_position"))
        if isinstance(single_token, str):
            token_id = self.to_single_token(single_token)
        elif isinstance(single_token, torch.Tensor):
            if single_token.numel() != 1:
                raise ValueError(f"single_token must hold one id, got shape {tuple(single_token.shape)}")
            token_id = int(single_token.item())
        else:
            token_id = int(single_token)
        positions = [i for i, t in enumerate(tokens) if t == token_id]
        if not positions:
            raise ValueError(f"token {single_token!r} (id {token_id}) does not occur in the input")
        return positions[0] if mode == "first" else positions[-1]

    def _resolve_bos(self, prepend_bos: bool | None) -> bool:
        return self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos

    @staticmethod
    def _squeeze_batch(tokens: Any, caller: str) -> Any:
        if isinstance(tokens, torch.Tensor) and tokens.ndim == 2:
            if tokens.shape[0] != 1:
                raise ValueError(f"{caller} takes a single sequence; got a batch of shape {tuple(tokens.shape)}")
            return tokens[0]
        return tokens
