"""Tests for lens.tokenizer: both backends and the model-side TokenizerMixin."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from lens.tokenizer import Tokenizer, TokenizerMixin

CORPUS = [
    "The cat sat on the mat.",
    "The dog sat on the log.",
    "A cat and a dog are friends.",
    "Interpretability is about looking inside the model.",
    "héllo wörld, naïve café ✓",
] * 5
SPECIALS = ["<s>", "</s>", "<pad>", "<|eot|>"]


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture(scope="module")
def bpe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny byte-level BPE tokenizer whose post-processor adds <s> (which encode() must NOT apply)."""
    tk = HFTokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(CORPUS, trainer=trainer)
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tk.token_to_id("<s>"))])
    tk.enable_truncation(max_length=3)  # must be switched off by the wrapper
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tk.save(str(path))
    return path


@pytest.fixture
def bpe_dir(bpe_file: Path, tmp_path: Path) -> Path:
    (tmp_path / "tokenizer.json").write_bytes(bpe_file.read_bytes())
    _write_json(
        tmp_path / "tokenizer_config.json",
        {"bos_token": "<s>", "eos_token": {"content": "</s>", "special": True}, "pad_token": None},
    )
    return tmp_path


class DummyModel(TokenizerMixin):
    def __init__(self, tokenizer: Tokenizer | None = None, **cfg: object) -> None:
        defaults = {
            "device": None,
            "default_prepend_bos": True,
            "default_padding_side": "right",
            "d_vocab": 300,
        }
        self.cfg = SimpleNamespace(**{**defaults, **cfg})
        self.tokenizer = tokenizer


# ---------------------------------------------------------------------- byte level
def test_byte_level_basics() -> None:
    tok = Tokenizer.byte_level()
    assert tok.vocab_size == 259
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.padding_id) == (256, 257, 258, 258)
    assert tok.eos_token_ids == [257]


@pytest.mark.parametrize("text", ["", "hello world", "héllo ✓", "日本語 🙂 mixed"])
def test_byte_level_round_trip(text: str) -> None:
    tok = Tokenizer.byte_level()
    ids = tok.encode(text, add_bos=False)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    with_bos = tok.encode(text, add_bos=True)
    assert with_bos == [256, *ids]
    assert tok.decode(with_bos) == "<|bos|>" + text
    assert tok.decode(torch.tensor(with_bos), skip_special_tokens=True) == text


def test_byte_level_decode_specials_and_invalid_bytes() -> None:
    tok = Tokenizer.byte_level()
    ids = [256, *b"a", 257, *b"b", 258, 258]
    assert tok.decode(ids) == "<|bos|>a<|eos|>b<|pad|><|pad|>"
    assert tok.decode(ids, skip_special_tokens=True) == "ab"
    assert tok.decode([0xC3]) == "\ufffd"  # truncated multi-byte char -> replacement
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([259])
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(torch.zeros(2, 2, dtype=torch.long))


def test_byte_level_token_strings() -> None:
    tok = Tokenizer.byte_level()
    assert tok.token_strings([256, 104, 105, 257]) == ["<|bos|>", "h", "i", "<|eos|>"]
    # "é" is two bytes; each decoded alone is a replacement character (TransformerLens semantics)
    assert tok.token_strings(tok.encode("é", add_bos=False)) == ["\ufffd", "\ufffd"]


@pytest.mark.parametrize("side", ["left", "right"])
def test_encode_batch_padding(side: str) -> None:
    tok = Tokenizer.byte_level()
    tokens, mask = tok.encode_batch(["abc", "é", ""], add_bos=True, padding_side=side)
    assert tokens.dtype == torch.long and mask.dtype == torch.long
    assert tokens.shape == mask.shape == (3, 4)
    rows = [[256, 97, 98, 99], [256, 0xC3, 0xA9], [256]]
    for row, ids in enumerate(rows):
        pad = [258] * (4 - len(ids))
        expected = ids + pad if side == "right" else pad + ids
        expected_mask = [1] * len(ids) + [0] * len(pad) if side == "right" else [0] * len(pad) + [1] * len(ids)
        assert tokens[row].tolist() == expected
        assert mask[row].tolist() == expected_mask
    assert tok.decode(tokens[1], skip_special_tokens=True) == "é"


def test_encode_batch_validation() -> None:
    tok = Tokenizer.byte_level()
    with pytest.raises(ValueError, match="'middle'"):
        tok.encode_batch(["a"], add_bos=False, padding_side="middle")
    with pytest.raises(ValueError, match="at least one"):
        tok.encode_batch([], add_bos=False)


# ---------------------------------------------------------------------- tokenizers backend
def test_from_file_matches_transformers_oracle(bpe_file: Path) -> None:
    transformers = pytest.importorskip("transformers")
    oracle = transformers.PreTrainedTokenizerFast(tokenizer_file=str(bpe_file))
    tok = Tokenizer.from_file(bpe_file, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    for text in ["The cat sat on the mat.", "héllo wörld ✓ unseen-words 123", "", "  spaces  "]:
        ids = tok.encode(text, add_bos=False)
        assert ids == oracle.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        assert tok.encode(text, add_bos=True) == [tok.bos_token_id, *ids]
    assert tok.vocab_size == oracle.backend_tokenizer.get_vocab_size(with_added_tokens=True)


def test_from_file_special_tokens(bpe_file: Path) -> None:
    raw = HFTokenizer.from_file(str(bpe_file))
    tok = Tokenizer.from_file(bpe_file, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    assert tok.bos_token_id == raw.token_to_id("<s>")
    assert tok.eos_token_id == raw.token_to_id("</s>")
    assert tok.pad_token_id == tok.padding_id == raw.token_to_id("<pad>")
    ids = tok.encode("The cat", add_bos=True) + [tok.eos_token_id]
    assert tok.decode(ids) == "<s>The cat</s>"
    assert tok.decode(ids, skip_special_tokens=True) == "The cat"
    assert tok.token_strings(tok.encode("The cat", add_bos=True)) == ["<s>", "The", " cat"]

    bare = Tokenizer.from_file(bpe_file)
    assert bare.bos_token_id is None and bare.eos_token_ids == [] and bare.padding_id == 0
    with pytest.raises(ValueError, match="no BOS"):
        bare.encode("x", add_bos=True)
    with pytest.raises(ValueError, match="<nope>"):
        Tokenizer.from_file(bpe_file, bos_token="<nope>")
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_file(bpe_file.parent / "missing.json")


def test_from_directory_discovers_special_tokens(bpe_dir: Path) -> None:
    raw = HFTokenizer.from_file(str(bpe_dir / "tokenizer.json"))
    tok = Tokenizer.from_directory(bpe_dir)
    assert tok.bos_token_id == raw.token_to_id("<s>")
    assert tok.eos_token_id == raw.token_to_id("</s>")  # from a {"content": ...} dict
    assert tok.pad_token_id is None
    assert tok.padding_id == tok.eos_token_id  # no PAD -> pad with EOS
    tokens, mask = tok.encode_batch(["The cat sat", "A"], add_bos=True, padding_side="left")
    assert tokens[1, 0].item() == tok.eos_token_id and mask[1, 0].item() == 0


def test_from_directory_special_map_and_config(bpe_dir: Path) -> None:
    raw = HFTokenizer.from_file(str(bpe_dir / "tokenizer.json"))
    eot, eos = raw.token_to_id("<|eot|>"), raw.token_to_id("</s>")
    _write_json(bpe_dir / "special_tokens_map.json", {"pad_token": {"content": "<pad>"}, "eos_token": "<|eot|>"})
    _write_json(bpe_dir / "config.json", {"eos_token_id": [eos, eot], "pad_token_id": -1})
    with pytest.warns(UserWarning, match="pad_token_id"):
        tok = Tokenizer.from_directory(bpe_dir)
    assert tok.pad_token_id == raw.token_to_id("<pad>")
    assert tok.eos_token_id == eot  # special_tokens_map overrides tokenizer_config
    assert tok.eos_token_ids == [eot, eos]


def test_from_directory_config_only(bpe_dir: Path) -> None:
    (bpe_dir / "tokenizer_config.json").unlink()
    _write_json(bpe_dir / "config.json", {"bos_token_id": 0, "eos_token_id": [1, 3]})
    tok = Tokenizer.from_directory(bpe_dir)
    assert (tok.bos_token_id, tok.eos_token_id, tok.eos_token_ids, tok.pad_token_id) == (0, 1, [1, 3], None)


def test_from_directory_missing_tokenizer_json(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_directory(tmp_path)


# ---------------------------------------------------------------------- mixin
def test_mixin_to_tokens() -> None:
    model = DummyModel(Tokenizer.byte_level(), device="cpu")
    assert model.to_tokens("hi").tolist() == [[256, 104, 105]]
    assert model.to_tokens("hi", prepend_bos=False).tolist() == [[104, 105]]
    tokens, mask = model.to_tokens(["hi", "a"], padding_side="left", return_attention_mask=True)
    assert tokens.tolist() == [[256, 104, 105], [258, 256, 97]]
    assert mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    model.cfg.default_prepend_bos = False
    model.cfg.default_padding_side = "left"
    assert model.to_tokens(["hi", "a"]).tolist() == [[104, 105], [258, 97]]
    with pytest.raises(ValueError, match="'up'"):
        model.to_tokens("a", padding_side="up")


def test_mixin_to_string_and_str_tokens() -> None:
    model = DummyModel(Tokenizer.byte_level())
    assert model.to_string(torch.tensor([104, 105])) == "hi"
    assert model.to_string([104, 105]) == "hi"
    assert model.to_string(torch.tensor([[104, 105], [97, 258]])) == ["hi", "a<|pad|>"]
    assert model.to_str_tokens("hé") == ["<|bos|>", "h", "\ufffd", "\ufffd"]
    assert model.to_str_tokens("hi", prepend_bos=False) == ["h", "i"]
    assert model.to_str_tokens(torch.tensor([[256, 104]])) == ["<|bos|>", "h"]
    assert model.to_str_tokens([104, 105]) == ["h", "i"]
    assert model.to_str_tokens(["a", "b"], prepend_bos=False) == [["a"], ["b"]]
    with pytest.raises(ValueError, match="single sequence"):
        model.to_str_tokens(torch.zeros(2, 3, dtype=torch.long))


def test_mixin_to_str_tokens_bpe(bpe_dir: Path) -> None:
    model = DummyModel(Tokenizer.from_directory(bpe_dir), d_vocab=1000)
    str_tokens = model.to_str_tokens("The cat sat")
    assert str_tokens == ["<s>", "The", " cat", " sat"]
    assert "".join(str_tokens[1:]) == "The cat sat"


def test_mixin_to_single_token() -> None:
    model = DummyModel(Tokenizer.byte_level())
    assert model.to_single_token("a") == 97
    with pytest.raises(ValueError, match=r"'ab'.*2 tokens"):
        model.to_single_token("ab")
    with pytest.raises(ValueError, match="0 tokens"):
        model.to_single_token("")
    with pytest.raises(ValueError, match="2 tokens"):
        model.to_single_token("é")


def test_mixin_get_token_position() -> None:
    model = DummyModel(Tokenizer.byte_level())
    assert model.get_token_position("a", "banana") == 2  # BOS at 0
    assert model.get_token_position("a", "banana", mode="last") == 6
    assert model.get_token_position("a", "banana", prepend_bos=False) == 1
    assert model.get_token_position(110, torch.tensor([[98, 97, 110, 97, 110]]), mode="last") == 4
    assert model.get_token_position(torch.tensor(98), [98, 97]) == 0
    with pytest.raises(ValueError, match="'z'"):
        model.get_token_position("z", "banana")
    with pytest.raises(ValueError, match="'middle'"):
        model.get_token_position("a", "banana", mode="middle")


def test_mixin_missing_tokenizer_and_set_tokenizer() -> None:
    model = DummyModel(None)
    for call in (
        lambda: model.to_tokens("a"),
        lambda: model.to_string([1]),
        lambda: model.to_str_tokens("a"),
        lambda: model.to_single_token("a"),
        lambda: model.get_token_position("a", "a"),
    ):
        with pytest.raises(ValueError, match="has no tokenizer.*set_tokenizer"):
            call()
    with pytest.raises(TypeError, match="Tokenizer"):
        model.set_tokenizer("gpt2")  # type: ignore[arg-type]
    model.cfg.d_vocab = 100
    with pytest.raises(ValueError, match=r"259.*100"):
        model.set_tokenizer(Tokenizer.byte_level())
    assert model.tokenizer is None
    del model.cfg.d_vocab  # no d_vocab -> no size check
    model.set_tokenizer(Tokenizer.byte_level())
    assert model.to_tokens("a").tolist() == [[256, 97]]
