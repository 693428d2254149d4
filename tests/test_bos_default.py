"""``cfg.default_prepend_bos`` follows the checkpoint's tokenizer, the family's convention only when it says nothing.

Tokenizers are built offline with the ``tokenizers`` library and written beside tiny checkpoints with a
``tokenizer_config.json`` written here: one that says true (``add_bos_token: true``, or a post-processor that
adds BOS), one that says false (``add_bos_token: false``, or a post-processor that adds no BOS), and one that says
nothing (no post-processor, no setting). The GPT-2 family's convention is False and Llama's True, so each
"says" case is checked against the family whose convention it contradicts. Where the setting and the
post-processor agree, ``to_tokens`` equals the ``transformers`` tokenizer of the same directory (the oracle).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

import lens.repro
from lens import HookedTransformer
from lens.tokenizer import Tokenizer, choose_prepend_bos
from tests.tiny import copy_dir, saved

# the tiny GPT-2 config's bos/eos_token_id 50256 is outside its 96-token vocabulary
pytestmark = pytest.mark.filterwarnings("ignore:ignoring out-of-vocab")

CORPUS = ["The cat sat on the mat.", "When Mary and John went to the store, John gave a drink to Mary."] * 3
TEXT = "The cat sat on the mat."
UNK, BOS, EOS = 0, 1, 2
FAMILY_BOS = {"gpt2": False, "llama3": True}  # the families' conventions (lens/families/gpt2.py, llama.py)


def write_tokenizer(directory: Path, post: str | None = None, add_bos_token: bool | None = None) -> Path:
    """A Metaspace BPE tokenizer of 96 ids (``<unk>``=0, ``<s>``=1, ``</s>``=2) into ``directory``.

    ``post``: None (no post-processor), ``"template"`` (``<s> $A``), ``"template-eos"`` (``$A </s>``: nothing
    before the text), ``"bytelevel"`` (adds no special tokens), ``"sequence"`` (ByteLevel then ``<s> $A``, as
    Llama 3's) or ``"eos-first"`` (``</s> $A``: a special token that is not BOS). ``add_bos_token``: written to
    ``tokenizer_config.json`` when not None.
    """
    tk = RawTokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    tk.train_from_iterator(CORPUS, trainer=trainers.BpeTrainer(vocab_size=80, special_tokens=["<unk>", "<s>", "</s>"]))
    tk.add_tokens([f"<extra_{i}>" for i in range(96 - tk.get_vocab_size())])
    template = {
        "template": processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)]),
        "template-eos": processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS)]),
        "eos-first": processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", EOS)]),
    }
    if post in template:
        tk.post_processor = template[post]
    elif post == "bytelevel":
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
    elif post == "sequence":
        tk.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False), template["template"]])
    elif post is not None:
        raise ValueError(post)
    tk.save(str(directory / "tokenizer.json"))
    config = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    if add_bos_token is not None:
        config["add_bos_token"] = add_bos_token
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def checkpoint(tmp_path: Path, family: str, post: str | None = None, add_bos_token: bool | None = None) -> Path:
    directory = copy_dir(saved(family)[0], tmp_path / f"{family}-{post}-{add_bos_token}")
    return write_tokenizer(directory, post, add_bos_token)


def hf_ids(directory: Path, text: str = TEXT) -> list[int]:
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(directory))(text)["input_ids"]


# -- what a tokenizer says ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("post", "add_bos_token", "says"),
    [
        (None, True, True),
        (None, False, False),
        (None, None, None),  # says nothing
        ("template", None, True),
        ("sequence", None, True),
        ("template-eos", None, False),
        ("bytelevel", None, False),
        ("eos-first", None, None),  # adds a token first, but not BOS: nothing to follow
        ("template", False, False),  # the setting wins over the post-processor
        ("bytelevel", True, True),
    ],
)
def test_tokenizer_says_from_its_setting_or_its_post_processor(tmp_path, post, add_bos_token, says):
    tok = Tokenizer.from_directory(write_tokenizer(tmp_path, post, add_bos_token))
    assert tok.add_bos_token is says
    reason = tok.add_bos_token_reason
    assert ("tokenizer_config.json" in reason) is (add_bos_token is not None)
    assert ("post-processor" in reason) is (add_bos_token is None)


def test_byte_level_and_bare_tokenizers_say_nothing(tmp_path):
    assert Tokenizer.byte_level().add_bos_token is None
    write_tokenizer(tmp_path, "template")
    assert Tokenizer.from_file(tmp_path / "tokenizer.json", bos_token="<s>").add_bos_token is True
    assert Tokenizer.from_file(tmp_path / "tokenizer.json").add_bos_token is None  # no BOS token declared


# -- loading follows it -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("family", "post", "add_bos_token"),
    [
        ("gpt2", None, True),  # the setting says true; GPT-2's convention is False
        ("gpt2", "template", None),  # the post-processor says true
        ("gpt2", "template", True),
        ("llama3", None, False),  # the setting says false; Llama's convention is True
        ("llama3", "bytelevel", None),  # the post-processor says false
        ("llama3", "bytelevel", False),
        ("llama3", "template-eos", None),
    ],
)
def test_default_follows_a_tokenizer_that_says(tmp_path, family, post, add_bos_token):
    directory = checkpoint(tmp_path, family, post, add_bos_token)
    model = HookedTransformer.from_pretrained(directory)
    want = post in ("template", "sequence") if add_bos_token is None else add_bos_token
    assert want is not FAMILY_BOS[family]  # each case contradicts the family's convention
    assert model.cfg.default_prepend_bos is want
    assert model.provenance["prepend_bos"]["origin"] == "tokenizer"
    assert (model.to_tokens(TEXT)[0, 0].item() == BOS) is want
    if post is not None:  # the setting and the post-processor agree: the transformers tokenizer is the oracle
        want_ids = hf_ids(directory)
        if post == "template-eos":  # to_tokens never appends EOS
            assert want_ids[-1] == EOS
            want_ids = want_ids[:-1]
        assert model.to_tokens(TEXT)[0].tolist() == want_ids


@pytest.mark.parametrize("family", ["gpt2", "llama3"])
def test_family_convention_when_the_tokenizer_says_nothing(tmp_path, family):
    model = HookedTransformer.from_pretrained(checkpoint(tmp_path, family))
    assert model.cfg.default_prepend_bos is FAMILY_BOS[family]
    choice = model.provenance["prepend_bos"]
    assert choice["origin"] == "family default" and "says nothing" in choice["reason"]
    bare = HookedTransformer.from_pretrained(saved(family)[0])  # no tokenizer at all
    assert bare.cfg.default_prepend_bos is FAMILY_BOS[family]
    assert bare.provenance["prepend_bos"]["origin"] == "family default"
    assert bare.provenance["prepend_bos"]["reason"].startswith("no tokenizer")


@pytest.mark.parametrize("override", [True, False])
def test_override_at_load_wins_over_the_tokenizer(tmp_path, override):
    says = checkpoint(tmp_path, "llama3", "template", True if not override else False)
    model = HookedTransformer.from_pretrained(says, default_prepend_bos=override)
    assert model.cfg.default_prepend_bos is override
    assert model.provenance["prepend_bos"] == {
        "value": override,
        "origin": "override",
        "reason": f"default_prepend_bos={override} was passed when loading",
    }
    assert (model.to_tokens(TEXT)[0, 0].item() == BOS) is override
    with pytest.raises(TypeError, match="default_prepend_bos must be a bool"):
        HookedTransformer.from_pretrained(says, default_prepend_bos="yes")


def test_override_after_load_stays_and_the_manifest_says_so(tmp_path):
    model = HookedTransformer.from_pretrained(checkpoint(tmp_path, "llama3", "bytelevel"))
    entry = lens.repro.manifest(model)["model"]["prepend_bos"]
    assert entry["value"] is False and entry["origin"] == "tokenizer"
    model.cfg.default_prepend_bos = True  # the per-model override
    assert model.to_tokens(TEXT)[0, 0].item() == BOS
    assert model.to_tokens(TEXT, prepend_bos=False)[0, 0].item() != BOS  # and the per-call one
    entry = lens.repro.manifest(model)["model"]["prepend_bos"]
    assert entry["value"] is True and entry["origin"] == "set after load"
    assert entry["at_load"]["value"] is False and entry["at_load"]["origin"] == "tokenizer"


def test_a_transformers_tokenizer_is_followed_by_what_it_does(tmp_path):
    transformers = pytest.importorskip("transformers")
    directory = checkpoint(tmp_path, "gpt2", "template")
    hf = transformers.AutoTokenizer.from_pretrained(str(directory))
    bare = HookedTransformer.from_pretrained(saved("gpt2")[0], tokenizer=hf)  # GPT-2 weights, a BOS-adding tokenizer
    assert bare.cfg.default_prepend_bos is True
    assert bare.provenance["prepend_bos"]["origin"] == "tokenizer" and bare.provenance["tokenizer"] == "argument"
    assert "transformers tokenizer" in bare.provenance["prepend_bos"]["reason"]
    assert bare.to_tokens(TEXT)[0].tolist() == hf(TEXT)["input_ids"]
    plain = transformers.AutoTokenizer.from_pretrained(str(checkpoint(tmp_path, "llama3", "bytelevel")))
    model = HookedTransformer.from_pretrained(saved("llama3")[0], tokenizer=plain)
    assert model.cfg.default_prepend_bos is False
    assert model.to_tokens(TEXT)[0].tolist() == plain(TEXT)["input_ids"]


def test_model_objects_follow_the_tokenizer_found_beside_them(tmp_path):
    transformers = pytest.importorskip("transformers")
    from lens.adapters import from_hf_model

    directory = checkpoint(tmp_path, "llama3", None, False)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(directory))
    model = HookedTransformer.from_pretrained(hf_model)
    assert model.cfg.default_prepend_bos is False and model.provenance["prepend_bos"]["origin"] == "tokenizer"
    assert model.provenance["tokenizer"] == str(directory.absolute())
    # from_hf_model looks up no tokenizer: the family's convention, unless a tokenizer or an override is given
    assert from_hf_model(hf_model).provenance["prepend_bos"]["origin"] == "family default"
    given = from_hf_model(hf_model, tokenizer=Tokenizer.from_directory(directory))
    assert given.cfg.default_prepend_bos is False and given.provenance["prepend_bos"]["origin"] == "tokenizer"
    forced = from_hf_model(hf_model, tokenizer=Tokenizer.from_directory(directory), default_prepend_bos=True)
    assert forced.cfg.default_prepend_bos is True and forced.provenance["prepend_bos"]["origin"] == "override"


def test_choose_prepend_bos_order():
    said = Tokenizer.byte_level()
    said.add_bos_token, said.add_bos_token_reason = False, "it says so"
    assert choose_prepend_bos(said, True) == {"value": False, "origin": "tokenizer", "reason": "it says so"}
    assert choose_prepend_bos(said, True, override=True)["origin"] == "override"
    assert choose_prepend_bos(None, True)["value"] is True
    assert choose_prepend_bos(Tokenizer.byte_level(), False)["value"] is False
    with pytest.raises(TypeError):
        choose_prepend_bos(None, True, override=1)


def test_generate_follows_the_default(tmp_path):
    """Generation's string prompts use the same default (no BOS when the tokenizer adds none)."""
    model = HookedTransformer.from_pretrained(checkpoint(tmp_path, "llama3", "bytelevel")).eval()
    out = model.generate(TEXT, max_new_tokens=2, return_type="tokens", do_sample=False)
    assert out[0, 0].item() != BOS
    assert torch.equal(out[0, : len(model.to_tokens(TEXT)[0])], model.to_tokens(TEXT)[0])
