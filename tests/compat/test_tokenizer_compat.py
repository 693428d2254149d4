"""``model.tokenizer`` answers the ``transformers`` calls TransformerLens notebooks make, with Hugging Face's results;
``HookedTransformer(cfg, tokenizer=hf_tokenizer)`` accepts a ``transformers`` tokenizer; ``to_string(int)``.

Oracle: the ``transformers`` tokenizer built from the same ``tokenizer.json`` (``PreTrainedTokenizerFast``),
method by method; TransformerLens's own ``to_tokens``/``to_string`` given that tokenizer (optional).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

import lens
from lens.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers", reason="the oracle is a transformers tokenizer")

CORPUS = [
    "The cat sat on the mat.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "Interpretability is about looking inside the model!",
    "héllo wörld, naïve café ✓ 12345",
] * 4
TEXTS = ["The cat sat on the mat.", "When Mary went", "", " héllo  wörld ✓ unseen-words", "a , b ."]
SPECIALS = {"gpt2": ["<|endoftext|>"], "llama": ["<unk>", "<s>", "</s>", "<pad>"]}


def build(kind: str, directory: Path) -> Path:
    """A byte-level BPE ``tokenizer.json``: GPT-2-like (no post-processor) or Llama-like (post-processor adds <s>)."""
    tk = RawTokenizer(models.BPE(unk_token="<unk>" if kind == "llama" else None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=330, special_tokens=SPECIALS[kind], initial_alphabet=alphabet)
    tk.train_from_iterator(CORPUS, trainer=trainer)
    if kind == "llama":
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tk.token_to_id("<s>"))]
        )
    tk.add_tokens(["<added>"])  # an added, non-special token: counted by len() but not by vocab_size
    path = directory / "tokenizer.json"
    tk.save(str(path))
    return path


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def pair(request, tmp_path_factory):
    """(lens tokenizer, transformers tokenizer) from the same file and special tokens."""
    path = build(request.param, tmp_path_factory.mktemp(request.param))
    if request.param == "gpt2":
        names = dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    else:
        names = dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), **names)
    return Tokenizer.from_file(path, **names), hf


def as_lists(enc):
    """input_ids and attention_mask as lists (transformers 4.x also returns token_type_ids, 5.x does not)."""
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in enc.items() if k != "token_type_ids"}


def test_attributes(pair):
    tok, hf = pair
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "pad_token", "bos_token", "eos_token", "vocab_size"):
        assert getattr(tok, name) == getattr(hf, name), name
    assert len(tok) == len(hf) and tok.vocab_size < len(tok)
    assert tok.get_vocab() == hf.get_vocab() == tok.vocab == hf.vocab
    assert tok.padding_side == hf.padding_side == "right"
    assert set(tok.all_special_ids) == set(hf.all_special_ids)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_tokenize(pair, text):
    tok, hf = pair
    assert tok.encode(text) == hf.encode(text)  # the backend's special tokens, as Hugging Face's default
    assert tok.encode(text, add_special_tokens=False) == hf.encode(text, add_special_tokens=False)
    assert tok.encode(text, max_length=4, truncation=True) == hf.encode(text, max_length=4, truncation=True)
    assert torch.equal(tok.encode(text, return_tensors="pt"), hf.encode(text, return_tensors="pt"))
    assert tok.tokenize(text) == hf.tokenize(text)
    ids = hf.encode(text)
    assert tok.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)
    assert tok.convert_tokens_to_ids(hf.convert_ids_to_tokens(ids)) == ids
    for skip in (False, True):
        assert tok.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
        assert tok.decode(torch.tensor(ids), skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    if ids:
        assert tok.decode(ids[-1]) == hf.decode(ids[-1])  # one id
        assert tok.convert_ids_to_tokens(ids[-1]) == hf.convert_ids_to_tokens(ids[-1])
    assert tok.convert_tokens_to_ids("<added>") == hf.convert_tokens_to_ids("<added>")
    assert tok.convert_tokens_to_ids("no-such-token") == hf.convert_tokens_to_ids("no-such-token")


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"padding": True},
        {"padding": True, "return_tensors": "pt"},
        {"padding": "max_length", "max_length": 24, "return_tensors": "pt"},
        {"padding": True, "truncation": True, "max_length": 5, "return_tensors": "pt"},
        {"max_length": 3},  # max_length without padding truncates, as Hugging Face
        {"add_special_tokens": False, "padding": "longest", "return_attention_mask": False},
    ],
)
def test_call(pair, side, kwargs):
    tok, hf = pair
    tok.padding_side = hf.padding_side = side
    try:
        texts = TEXTS[:4]
        assert as_lists(tok(texts, **kwargs)) == as_lists(hf(texts, **kwargs))
        assert as_lists(tok(texts[0], **kwargs)) == as_lists(hf(texts[0], **kwargs))
        enc = tok(texts, **kwargs)
        assert enc.input_ids is enc["input_ids"] and ("attention_mask" in enc) == (
            "attention_mask" in hf(texts, **kwargs)
        )
        if kwargs.get("return_tensors") == "pt":
            padded = enc["input_ids"]
            assert tok.batch_decode(padded) == hf.batch_decode(padded)
            assert tok.batch_decode(padded, skip_special_tokens=True) == hf.batch_decode(
                padded, skip_special_tokens=True
            )
    finally:
        tok.padding_side = hf.padding_side = "right"


def test_call_errors(pair):
    tok, _ = pair
    with pytest.raises(ValueError, match="padding=True"):
        tok(TEXTS[:2], return_tensors="pt")  # ragged: Hugging Face refuses too
    with pytest.raises(ValueError, match="padding_side"):
        tok.padding_side = "middle"
    with pytest.raises(ValueError, match="return_tensors"):
        tok("a", return_tensors="tf")
    with pytest.raises(ValueError, match="'<nope>' is not in the vocabulary"):
        tok.pad_token = "<nope>"
    with pytest.raises(ValueError, match="max_length"):
        tok("a", padding="max_length")


def test_padding_without_pad_token_raises_as_hugging_face(tmp_path):
    path = build("gpt2", tmp_path)
    tok, hf = Tokenizer.from_file(path), transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    assert tok.pad_token_id is None and hf.pad_token_id is None
    with pytest.raises(ValueError):
        hf(["a", "bb"], padding=True)
    with pytest.raises(ValueError, match="no padding token"):
        tok(["a", "bb"], padding=True)
    tok.pad_token = "<|endoftext|>"
    hf.pad_token = "<|endoftext|>"
    assert as_lists(tok(["a", "bb"], padding=True)) == as_lists(hf(["a", "bb"], padding=True))


def test_byte_level_surface():
    tok = Tokenizer.byte_level()
    enc = tok(["hi", "a"], padding=True, return_tensors="pt")
    assert enc.input_ids.tolist() == [[104, 105], [97, 258]] and enc.attention_mask.tolist() == [[1, 1], [1, 0]]
    assert tok.encode("hi") == [104, 105]  # no post-processor: no special tokens added
    assert tok.batch_decode(enc.input_ids, skip_special_tokens=True) == ["hi", "a"]
    assert tok.convert_tokens_to_ids(tok.convert_ids_to_tokens([104, 200, 256])) == [104, 200, 256]
    assert len(tok) == tok.vocab_size == 259 and len(tok.get_vocab()) == 259
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")


# -- a transformers tokenizer given to the model --------------------------------------------------------------------
def tiny_cfg(d_vocab):
    return lens.TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=d_vocab, n_ctx=32)


def test_model_accepts_hf_tokenizer(pair):
    _, hf = pair
    bos_before = hf.bos_token_id
    model = lens.HookedTransformer(tiny_cfg(len(hf)), tokenizer=hf)
    assert isinstance(model.tokenizer, Tokenizer) and hf.bos_token_id == bos_before  # hf itself is not changed
    for text in TEXTS[:3]:
        plain = hf.encode(text, add_special_tokens=False)
        assert model.to_tokens(text, prepend_bos=False)[0].tolist() == plain
        assert model.to_tokens(text, prepend_bos=True)[0].tolist() == [hf.bos_token_id, *plain]
        assert model.tokenizer.encode(text) == hf.encode(text)
        assert model.to_str_tokens(text, prepend_bos=False) == [hf.decode([i]) for i in plain]
    ids = hf.encode(TEXTS[0], add_special_tokens=False)
    assert model.to_string(ids[0]) == hf.decode(ids[0])  # one token, as TransformerLens
    assert model.to_string(torch.tensor(ids[1])) == hf.decode(ids[1])
    assert model.to_string(ids) == hf.decode(ids) == model.to_string(torch.tensor(ids))
    batch = torch.tensor([ids[:3], ids[3:6]])
    assert model.to_string(batch) == hf.batch_decode(batch)
    assert model.to_string([torch.tensor(ids[:3]), torch.tensor(ids[3:6])]) == hf.batch_decode(batch)
    long_text = " ".join(TEXTS) * 3  # more than n_ctx=32 tokens: kept to the first n_ctx, as TransformerLens
    full = [hf.bos_token_id, *hf.encode(long_text, add_special_tokens=False)]
    assert len(full) > 32 and model.to_tokens(long_text)[0].tolist() == full[:32]
    assert model.to_tokens(long_text, truncate=False)[0].tolist() == full
    out = model.generate("The cat", max_new_tokens=3, do_sample=False, verbose=False)
    assert isinstance(out, str) and out.startswith("The cat")


def test_hf_tokenizer_padding_side_and_missing_pad(tmp_path):
    path = build("gpt2", tmp_path)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token="<|endoftext|>")
    hf.padding_side = "left"
    model = lens.HookedTransformer(tiny_cfg(len(hf)), tokenizer=hf)
    eos = hf.eos_token_id
    assert model.tokenizer.pad_token_id == eos and model.tokenizer.bos_token_id == eos  # as TransformerLens
    tokens = model.to_tokens(["The cat sat on the mat.", "The"], prepend_bos=False)
    assert tokens[1, 0].item() == eos and tokens[1, -1].item() == hf.encode("The")[-1]  # padded on the left
    with pytest.raises(TypeError, match="transformers tokenizer"):
        model.set_tokenizer("gpt2")


def test_slow_tokenizer_refused_clearly():
    class FakeSlow(transformers.PreTrainedTokenizerBase):
        pass

    with pytest.raises(TypeError, match="use_fast=True"):
        Tokenizer.from_hf(FakeSlow.__new__(FakeSlow))


# -- TransformerLens as the oracle ----------------------------------------------------------------------------------
def test_model_tokenizer_calls_match_transformer_lens(tmp_path):
    tl = pytest.importorskip("transformer_lens", reason="TransformerLens is an optional oracle (install 2.x)")
    path = build("gpt2", tmp_path)
    names = dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), **names).save_pretrained(tmp_path / "hf")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")  # TransformerLens reloads it by name
    cfg = dict(n_layers=1, d_model=16, n_heads=2, d_head=8, n_ctx=32, d_vocab=len(hf), act_fn="gelu")
    tl_model = tl.HookedTransformer(tl.HookedTransformerConfig(**cfg), tokenizer=hf)
    model = lens.HookedTransformer(tiny_cfg(len(hf)), tokenizer=hf)
    texts = TEXTS[:4]
    for side in ("right", "left"):
        assert torch.equal(model.to_tokens(texts, padding_side=side), tl_model.to_tokens(texts, padding_side=side))
    assert torch.equal(model.to_tokens(texts[0], prepend_bos=False), tl_model.to_tokens(texts[0], prepend_bos=False))
    ids = tl_model.to_tokens(texts[:2])
    assert model.to_string(ids) == tl_model.to_string(ids)
    assert model.to_string(ids[0, 2]) == tl_model.to_string(ids[0, 2])
    assert model.to_string(int(ids[0, 2])) == tl_model.to_string(int(ids[0, 2]))
    assert model.to_str_tokens(texts[0]) == tl_model.to_str_tokens(texts[0])
    long_texts = [" ".join(TEXTS) * 3, "The"]
    assert torch.equal(model.to_tokens(long_texts), tl_model.to_tokens(long_texts))  # truncated to n_ctx
    assert torch.equal(model.to_tokens(long_texts, truncate=False), tl_model.to_tokens(long_texts, truncate=False))
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "padding_side", "vocab_size"):
        assert getattr(model.tokenizer, name) == getattr(tl_model.tokenizer, name), name
    batch = model.tokenizer(texts, return_tensors="pt", padding=True)
    batch_tl = tl_model.tokenizer(texts, return_tensors="pt", padding=True)
    assert as_lists(batch) == as_lists(batch_tl)
    model.tokenizer.padding_side = tl_model.tokenizer.padding_side = "left"  # a notebook's way to pad left
    assert torch.equal(model.to_tokens(texts), tl_model.to_tokens(texts))


def test_from_directory_reads_what_auto_tokenizer_reads(tmp_path):
    path = build("llama", tmp_path)
    names = dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    saved = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(path), clean_up_tokenization_spaces=True, model_max_length=6, **names
    )
    saved.save_pretrained(tmp_path / "saved")
    tok, hf = (
        Tokenizer.from_directory(tmp_path / "saved"),
        transformers.AutoTokenizer.from_pretrained(tmp_path / "saved"),
    )
    assert (tok.unk_token, tok.unk_token_id, tok.model_max_length) == (hf.unk_token, hf.unk_token_id, 6)
    ids = hf.encode("a , b . When Mary went")  # clean-up only when asked (transformers 5 ignores the config for BPE)
    assert tok.decode(ids) == hf.decode(ids, clean_up_tokenization_spaces=False)
    cleaned = tok.decode(ids, clean_up_tokenization_spaces=True)
    assert cleaned == hf.clean_up_tokenization(tok.decode(ids)) != tok.decode(ids)
    assert tok.encode("a , b . When Mary went", truncation=True) == hf.encode("a , b . When Mary went", truncation=True)
    assert tok.convert_tokens_to_ids("no-such-token") == hf.convert_tokens_to_ids("no-such-token") == hf.unk_token_id
