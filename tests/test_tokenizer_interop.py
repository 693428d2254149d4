"""``transformers`` tokenizers on lens models, tokenizers found beside (or in the hub cache of) a model object, and
chat templates.

Oracle: the ``transformers`` tokenizer (``AutoTokenizer``) of the same directory: its encodings, its
``apply_chat_template`` (string and ids); and lens's own ``tokenizer.json``-based tokenizer for ``generate``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

import lens
from lens import HookedTransformer
from lens.tokenizer import Tokenizer
from tests.tiny import saved

# the tiny GPT-2 config's eos_token_id 50256 is outside its 96-token vocabulary
pytestmark = pytest.mark.filterwarnings("ignore:ignoring out-of-vocab eos_token_id")

transformers = pytest.importorskip("transformers", reason="the oracle is a transformers tokenizer")
jinja2 = pytest.importorskip("jinja2", reason="chat templates are Jinja")

CORPUS = [
    "The cat sat on the mat.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "<|user|>\nHello there<|assistant|>\nHi! How can I help?<|system|>\nBe brief.",
] * 3
TEXTS = ["The cat sat on the mat.", "When Mary went", "Hello there, John!"]
# bos_token / eos_token / raise_exception / add_generation_prompt, with trim_blocks-sensitive newlines
TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}\n<|assistant|>\n{% endif %}"
)
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello there"},
]
CHATS = [CHAT, [{"role": "user", "content": "The cat sat"}, {"role": "assistant", "content": "on the mat."}]]


def write_tokenizer(directory: Path, kind: str, template: str | None = TEMPLATE, jinja_file: bool = False) -> Path:
    """A Metaspace BPE tokenizer (< 96 ids) into ``directory``: Llama-like (post-processor adds ``<s>``, ids
    <unk>=0, <s>=1, </s>=2 as the tiny llama3 config) or GPT-2-like (``<|endoftext|>``=0, no post-processor)."""
    specials = ["<unk>", "<s>", "</s>"] if kind == "llama" else ["<|endoftext|>"]
    tk = RawTokenizer(models.BPE(unk_token="<unk>" if kind == "llama" else None))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    tk.train_from_iterator(CORPUS, trainer=trainers.BpeTrainer(vocab_size=90, special_tokens=specials))
    # fill the tiny models' 96 ids, so any id a random model generates decodes
    tk.add_tokens([f"<extra_{i}>" for i in range(96 - tk.get_vocab_size())])
    assert tk.get_vocab_size() == 96
    if kind == "llama":
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    else:
        config = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if template is not None and not jinja_file:
        config["chat_template"] = template
    if template is not None and jinja_file:
        (directory / "chat_template.jinja").write_text(template, encoding="utf-8")
    tk.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def checkpoint(request, tmp_path_factory) -> tuple[str, Path]:
    """(kind, a tiny checkpoint directory with tokenizer files and a chat template)."""
    source, _ = saved("llama3" if request.param == "llama" else "gpt2")
    directory = tmp_path_factory.mktemp(request.param) / "ckpt"
    shutil.copytree(source, directory)
    return request.param, write_tokenizer(directory, request.param)


def hf_tokenizer(directory: Path):
    return transformers.AutoTokenizer.from_pretrained(str(directory))


def load(directory: Path, **kwargs) -> HookedTransformer:
    return HookedTransformer.from_pretrained(directory, **kwargs)


# -- HF tokenizer objects on lens models --------------------------------------------------------------
def test_from_pretrained_and_set_tokenizer_accept_hf_tokenizers(checkpoint):
    kind, directory = checkpoint
    hf = hf_tokenizer(directory)
    assert isinstance(hf, transformers.PreTrainedTokenizerBase)
    model = HookedTransformer.from_pretrained(directory, tokenizer=hf)
    assert isinstance(model.tokenizer, Tokenizer)
    for name in ("bos_token_id", "eos_token_id", "bos_token", "eos_token", "unk_token_id", "padding_side"):
        assert getattr(model.tokenizer, name) == getattr(hf, name), name
    # no pad token: lens pads with EOS, as TransformerLens's set_tokenizer
    assert hf.pad_token_id is None and model.tokenizer.pad_token_id == hf.eos_token_id
    assert model.tokenizer.chat_template == hf.chat_template == TEMPLATE
    other = load(directory)
    other.set_tokenizer(hf)
    assert other.tokenizer.get_vocab() == hf.get_vocab()
    with pytest.raises(TypeError, match="Tokenizer or a transformers tokenizer"):
        other.set_tokenizer(object())


@pytest.mark.parametrize("text", TEXTS)
def test_to_tokens_equals_hf_encoding(checkpoint, text):
    kind, directory = checkpoint
    hf = hf_tokenizer(directory)
    model = HookedTransformer.from_pretrained(directory, tokenizer=hf)
    # the model's default is what HF's tokenizer does on its own: <s> for Llama, nothing for GPT-2
    assert model.cfg.default_prepend_bos is (kind == "llama")
    assert model.to_tokens(text)[0].tolist() == hf(text)["input_ids"]
    assert model.to_tokens(text, prepend_bos=False)[0].tolist() == hf(text, add_special_tokens=False)["input_ids"]
    with_bos = model.to_tokens(text, prepend_bos=True)[0].tolist()
    assert with_bos == [hf.bos_token_id, *hf(text, add_special_tokens=False)["input_ids"]]
    assert model.to_str_tokens(text) == [hf.decode([i]) for i in hf(text)["input_ids"]]
    ids = hf(text)["input_ids"]
    assert model.to_string(torch.tensor(ids)) == hf.decode(ids)


def test_padding_side_comes_from_the_hf_tokenizer(checkpoint):
    _, directory = checkpoint
    hf = hf_tokenizer(directory)
    hf.pad_token = hf.eos_token
    hf.padding_side = "left"
    model = HookedTransformer.from_pretrained(directory, tokenizer=hf)
    assert model.tokenizer.padding_side == "left" and model.tokenizer.pad_token_id == hf.pad_token_id
    tokens, mask = model.to_tokens(TEXTS, return_attention_mask=True)
    want = hf(TEXTS, padding=True, return_tensors="pt", add_special_tokens=model.cfg.default_prepend_bos)
    assert tokens.tolist() == want["input_ids"].tolist() and mask.tolist() == want["attention_mask"].tolist()
    assert hf.padding_side == "left"  # the caller's object is untouched by lens


def test_generate_with_hf_tokenizer_equals_lens_tokenizer(checkpoint):
    _, directory = checkpoint
    hf = hf_tokenizer(directory)
    ours = load(directory).eval()
    theirs = HookedTransformer.from_pretrained(directory, tokenizer=hf).eval()
    assert theirs.tokenizer.eos_token_ids == ours.tokenizer.eos_token_ids[:1]
    for prompt in (TEXTS[0], TEXTS):
        assert theirs.generate(prompt, max_new_tokens=8) == ours.generate(prompt, max_new_tokens=8)
    a = theirs.generate(TEXTS[1], max_new_tokens=12, do_sample=True, seed=3, return_type="tokens")
    b = ours.generate(TEXTS[1], max_new_tokens=12, do_sample=True, seed=3, return_type="tokens")
    assert torch.equal(a, b)


# -- tokenizers of model objects ----------------------------------------------------------------------
def test_model_object_from_a_directory_gets_its_tokenizer(checkpoint):
    _, directory = checkpoint
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(directory))
    model = HookedTransformer.from_pretrained(hf_model)
    assert model.tokenizer is not None and model.tokenizer.get_vocab() == hf_tokenizer(directory).get_vocab()
    assert model.tokenizer.chat_template == TEMPLATE
    mine = Tokenizer.from_directory(directory)
    assert HookedTransformer.from_pretrained(hf_model, tokenizer=mine).tokenizer is mine  # attached as given


def test_model_object_with_a_hub_name_finds_the_cached_tokenizer(tmp_path, monkeypatch):
    """``name_or_path`` a hub id: the tokenizer comes from that repository's snapshot in the HF cache, offline."""
    source, _ = saved("llama3")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = tmp_path / "hub" / "models--acme--tiny-llama"
    snapshot = repo_dir / "snapshots" / commit
    shutil.copytree(source, snapshot)
    write_tokenizer(snapshot, "llama")
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(snapshot))
    hf_model.config._name_or_path = "acme/tiny-llama"
    hf_model.name_or_path = "acme/tiny-llama"
    model = HookedTransformer.from_pretrained(hf_model)
    assert model.tokenizer is not None
    assert model.tokenizer.get_vocab() == hf_tokenizer(snapshot).get_vocab()
    hf_model.name_or_path = "acme/not-cached"  # nothing cached: no tokenizer, no error, no network
    assert HookedTransformer.from_pretrained(hf_model).tokenizer is None


# -- chat templates -----------------------------------------------------------------------------------
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_apply_chat_template_equals_transformers(checkpoint, add_generation_prompt):
    kind, directory = checkpoint
    hf = hf_tokenizer(directory)
    model = load(directory)
    for conversation in (CHAT, CHATS):
        want = hf.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt, tokenize=False)
        got = model.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt, tokenize=False)
        assert got == want
        want_ids = hf.apply_chat_template(
            conversation, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False
        )
        got_ids = model.tokenizer.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt)
        assert got_ids == want_ids
    text = model.apply_chat_template(CHAT, add_generation_prompt=True)
    ids = hf.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert text.startswith(hf.bos_token) and ids[0] == hf.bos_token_id and ids[1] != hf.bos_token_id
    assert model.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)[0].tolist() == ids
    # the template's BOS is the only one, with the model's default prepend_bos and with prepend_bos=True
    assert model.to_tokens(text)[0].tolist() == ids
    assert model.to_tokens(text, prepend_bos=True)[0].tolist() == ids
    assert model.to_str_tokens(text, prepend_bos=True) == [hf.decode([i]) for i in ids]


def test_chat_template_jinja_file_and_hf_tokenizer_object(tmp_path):
    source, _ = saved("llama3")
    directory = tmp_path / "ckpt"
    shutil.copytree(source, directory)
    # chat_template.jinja wins over tokenizer_config.json's entry, as in transformers
    write_tokenizer(directory, "llama", template=TEMPLATE, jinja_file=True)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": "ignored"}))
    hf = hf_tokenizer(directory)
    assert hf.chat_template == TEMPLATE
    model = HookedTransformer.from_pretrained(directory)
    assert model.tokenizer.chat_template == TEMPLATE
    want = hf.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert model.apply_chat_template(CHAT, add_generation_prompt=True) == want
    # an HF tokenizer object carrying a template (set in memory) works too
    hf.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}"
    model.set_tokenizer(hf)
    assert model.apply_chat_template(CHATS) == hf.apply_chat_template(CHATS, tokenize=False)


def test_raise_exception_and_missing_template(checkpoint, tmp_path):
    _, directory = checkpoint
    hf = hf_tokenizer(directory)
    model = load(directory)
    bad = [{"role": "wizard", "content": "hi"}]
    with pytest.raises(jinja2.exceptions.TemplateError, match="unknown role wizard"):
        hf.apply_chat_template(bad, tokenize=False)
    with pytest.raises(jinja2.exceptions.TemplateError, match="unknown role wizard"):
        model.apply_chat_template(bad)
    plain = Tokenizer.from_directory(directory)
    plain.chat_template = None
    model.set_tokenizer(plain)
    with pytest.raises(ValueError, match="no chat template"):
        model.apply_chat_template(CHAT)
    assert model.apply_chat_template(CHAT, chat_template="{{ messages[1]['content'] }}") == "Hello there"
    with pytest.raises(TypeError, match="role"):
        model.tokenizer.apply_chat_template(["not a message"], chat_template="x")


def test_continue_final_message_equals_transformers(checkpoint):
    _, directory = checkpoint
    hf = hf_tokenizer(directory)
    model = load(directory)
    chat = [*CHAT, {"role": "assistant", "content": "Hi! How"}]
    want = hf.apply_chat_template(chat, continue_final_message=True, tokenize=False)
    assert model.apply_chat_template(chat, continue_final_message=True) == want
    assert want.endswith("Hi! How")


def test_generate_accepts_chat_messages(checkpoint):
    _, directory = checkpoint
    model = load(directory).eval()
    for conversation in (CHAT, CHATS):
        text = model.apply_chat_template(conversation, add_generation_prompt=True)
        want = model.generate(text, max_new_tokens=6, prepend_bos=False)
        assert model.generate(conversation, max_new_tokens=6) == want
        tokens = model.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
        if isinstance(conversation[0], dict):
            got = model.generate(conversation, max_new_tokens=6, return_type="tokens")
            assert torch.equal(got[:, : tokens.shape[1]], tokens)
    text = model.apply_chat_template(CHAT, add_generation_prompt=True)
    assert list(model.generate_stream(CHAT, max_new_tokens=4)) == list(
        model.generate_stream(text, max_new_tokens=4, prepend_bos=False)
    )
    with pytest.raises(ValueError, match="attention_mask"):
        model.generate(CHAT, max_new_tokens=2, attention_mask=torch.ones(1, 3))


def test_lens_import_does_not_import_transformers_or_jinja():
    import subprocess
    import sys

    code = "import sys, lens; lens.zoo; print('transformers' in sys.modules, 'jinja2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"], out
    assert lens.Tokenizer is Tokenizer
