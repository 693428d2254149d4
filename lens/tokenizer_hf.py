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

__all__ = ["BatchEncoding", "HFTokenizerMixin", "render_chat_template"]

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


def _hf_adds_bos(hf_tokenizer: Any, bos: int | None, probe: str = "Hello") -> tuple[bool, str] | None:
    """What a ``transformers`` tokenizer does on its own: ``(True, why)`` when ``encode(probe)`` starts with
    ``bos`` and the encoding without special tokens does not, ``(False, why)`` when it adds nothing before the
    text, None when it cannot be asked or adds some other token first (its backend's post-processor is read
    instead)."""
    try:
        with_specials = list(hf_tokenizer.encode(probe, add_special_tokens=True))
        without = list(hf_tokenizer.encode(probe, add_special_tokens=False))
    except Exception:  # an object that is not quite a transformers tokenizer: read its post-processor
        return None
    name = type(hf_tokenizer).__name__
    if bos is not None and with_specials[:1] == [bos] and without[:1] != [bos]:
        return True, f"the transformers tokenizer ({name}) adds the BOS token (id {bos}) before the text"
    if with_specials[: len(without)] == without:
        return False, f"the transformers tokenizer ({name}) adds nothing before the text"
    return None


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
    chat_template: str | dict[str, str] | None = None  # Jinja source, or {name: source}; see apply_chat_template
    # special-token strings as the checkpoint declares them (Hugging Face's special_tokens_map), for templates;
    # None: this tokenizer's own (which may fill a missing BOS with EOS, as TransformerLens)
    _template_specials: dict[str, str] | None = None

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
        template = getattr(hf_tokenizer, "chat_template", None)
        tok.chat_template = dict(template) if isinstance(template, dict) else template
        specials = getattr(hf_tokenizer, "special_tokens_map", None)
        if isinstance(specials, dict):
            tok._template_specials = {k: str(v) for k, v in specials.items() if isinstance(v, str)}
        said = _hf_adds_bos(hf_tokenizer, tok.bos_token_id)
        if said is not None:
            tok.add_bos_token, tok.add_bos_token_reason = said
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

    # -- chat templates -----------------------------------------------------------------------------
    def get_chat_template(self, chat_template: str | None = None, tools: list | None = None) -> str:
        """The Jinja source ``apply_chat_template`` renders: ``chat_template`` (a template, or the name of one of
        several), else the tokenizer's (``"tool_use"`` when ``tools`` are given and it exists, else ``"default"``),
        as Hugging Face. ValueError when there is none."""
        return select_chat_template(self.chat_template, chat_template, tools)

    def apply_chat_template(
        self,
        conversation: Sequence[dict[str, Any]] | Sequence[Sequence[dict[str, Any]]],
        tools: list[dict] | None = None,
        documents: list[dict] | None = None,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        tokenize: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_dict: bool = False,
        **kwargs: Any,
    ) -> str | list[str] | list[int] | list[list[int]] | torch.Tensor | BatchEncoding:
        """Hugging Face's ``tokenizer.apply_chat_template``: render a conversation (a list of ``{"role", "content"}``
        dicts) or a batch of them with the checkpoint's chat template.

        The template sees ``messages``, ``tools``, ``documents``, ``add_generation_prompt``, the special-token
        strings (``bos_token``, ``eos_token``, ...) and ``**kwargs``, and may call ``raise_exception``; it runs in
        Jinja's sandbox with ``trim_blocks``/``lstrip_blocks``, as in ``transformers`` (needs ``jinja2``).
        ``tokenize=True`` encodes the text without adding special tokens (a BOS the template writes is the only
        one), then pads/truncates as ``__call__``; ``return_dict=True`` gives the :class:`BatchEncoding`
        (``transformers`` 5's default; 4.x's, kept here, is the ids alone).

        >>> chat = [{"role": "user", "content": "Hi"}]
        >>> tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)  # doctest: +SKIP
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
        """
        if continue_final_message and add_generation_prompt:
            raise ValueError(
                "continue_final_message and add_generation_prompt are not compatible: the first leaves the last "
                "message open, the second starts a new assistant message"
            )
        template = self.get_chat_template(chat_template, tools)
        batched = is_chat_batch(conversation)
        if not batched and not is_chat(conversation):
            raise TypeError(
                "conversation must be a list of {'role': ..., 'content': ...} dicts or a list of such lists"
            )
        conversations = [list(c) for c in conversation] if batched else [list(conversation)]
        specials = self.special_tokens_map if self._template_specials is None else self._template_specials
        variables = {**specials, **kwargs}  # kwargs overwrite special tokens, as Hugging Face
        rendered = [
            render_chat_template(
                template,
                chat,
                tools=tools,
                documents=documents,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                **variables,
            )
            for chat in conversations
        ]
        if not tokenize:
            return rendered if batched else rendered[0]
        out = self(
            rendered if batched else rendered[0],
            add_special_tokens=False,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            return_tensors=return_tensors,
        )
        return out if return_dict else out["input_ids"]


# -- chat templates (module level: the model's apply_chat_template and generate use them too) -----------
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def is_chat(value: Any) -> bool:
    """True for one conversation: a non-empty list/tuple of dicts that each have a ``"role"``."""
    return (
        isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(m, dict) and "role" in m for m in value)
    )


def is_chat_batch(value: Any) -> bool:
    """True for a batch of conversations: a non-empty list/tuple of :func:`is_chat` conversations."""
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(is_chat(c) for c in value)


def select_chat_template(own: str | dict[str, str] | None, given: str | None = None, tools: list | None = None) -> str:
    """Hugging Face's ``get_chat_template`` over a tokenizer's ``chat_template`` (``own``)."""
    if isinstance(own, dict):
        if given is not None and given in own:
            return own[given]
        if given is None:
            if tools is not None and "tool_use" in own:
                return own["tool_use"]
            if "default" in own:
                return own["default"]
            raise ValueError(
                f"this tokenizer has several chat templates and none is 'default'; pass chat_template= one of "
                f"{sorted(own)}"
            )
        return given
    if given is not None:
        return given
    if own is None:
        raise ValueError(
            "this tokenizer has no chat template (none in tokenizer_config.json 'chat_template' or a "
            "chat_template.jinja beside it); pass chat_template='...' (Jinja source)"
        )
    return own


_COMPILED: dict[str, Any] = {}


def _compile(template: str) -> Any:
    """``template`` compiled in a sandboxed Jinja environment configured as ``transformers``' (cached)."""
    if template in _COMPILED:
        return _COMPILED[template]
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:
        raise ImportError(
            "chat templates are Jinja templates: install jinja2 (pip install 'jinja2>=3.1'; transformers installs it)"
        ) from e
    import json
    from datetime import datetime

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys=False):
        # as transformers: no HTML escaping (Jinja's own tojson escapes <, >, &, ')
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    compiled = env.from_string(template)
    if len(_COMPILED) > 32:
        _COMPILED.clear()
    _COMPILED[template] = compiled
    return compiled


def render_chat_template(
    template: str,
    messages: Sequence[dict[str, Any]],
    *,
    tools: list[dict] | None = None,
    documents: list[dict] | None = None,
    add_generation_prompt: bool = False,
    continue_final_message: bool = False,
    **variables: Any,
) -> str:
    """One conversation rendered with a chat template, as ``transformers``' ``render_jinja_template``.

    Message keys whose value is None are dropped (as Hugging Face); ``continue_final_message`` cuts the text
    right after the last message's content, so the model continues it.

    >>> render_chat_template("{% for m in messages %}{{ m.role }}: {{ m.content }}\\n{% endfor %}",
    ...                      [{"role": "user", "content": "hi"}])
    'user: hi\\n'
    """
    chat = [{k: v for k, v in dict(m).items() if v is not None} for m in messages]
    final = None
    if continue_final_message:
        final = chat[-1].get("content") if chat else None
        if not isinstance(final, str):
            raise ValueError("continue_final_message needs a last message whose content is a string")
        chat[-1]["content"] = final + _CONTINUE_TAG
    text = _compile(template).render(
        messages=chat, tools=tools, documents=documents, add_generation_prompt=add_generation_prompt, **variables
    )
    if final is not None:
        tag = _CONTINUE_TAG.strip()
        if final.strip() not in text or tag not in text:
            raise ValueError("continue_final_message: the chat template dropped (part of) the final message")
        at = text.rindex(tag)
        text = text[:at] if text[at : at + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:at].rstrip()
    return text
