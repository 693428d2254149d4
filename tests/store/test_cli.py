"""``python -m lens.store harvest|info|verify``, run in-process through ``lens.store.__main__.main(argv)``.

The oracle for ``harvest`` is the same harvest through the Python API (byte-identical shards) and
``run_with_cache``; for ``info`` the manifest and the files on disk; for ``verify`` a shard damaged here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import lens
import lens.store
from lens.store import shards as fmt
from lens.store.__main__ import main

MODEL = "attn-only-2l"
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern"]
CTX, BATCH, SHARD, N_CONTEXTS = 16, 4, 3, 8
DOCS = ["def add(a, b):\n    return a + b\n", "# a comment / with a slash\n", "print('héllo world')\n"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def corpus(tmp_path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    for i, text in enumerate(DOCS):
        (root / f"f{i}.py").write_text(text * (6 + 3 * i), encoding="utf-8")
    return root


def cli(*argv: str, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def harvest_args(model: str, source: Path, out: Path, *extra: str) -> list[str]:
    return ["harvest", "--model", model, "--source", str(source), "--out", str(out), "--hooks", *HOOKS,
            "--context-size", str(CTX), "--batch-size", str(BATCH), "--max-tokens", str(CTX * N_CONTEXTS),
            "--shard-contexts", str(SHARD), *extra]  # fmt: skip


def assert_same_shards(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.glob("shard-*"))
    assert names and names == sorted(p.name for p in b.glob("shard-*"))
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_harvest_info_verify_with_a_zoo_model(corpus, tmp_path, capsys):
    out = tmp_path / "acts"
    rc, stdout, _ = cli(*harvest_args(MODEL, corpus, out), capsys=capsys)
    rows = N_CONTEXTS * (CTX - 1)
    assert rc == 0 and f"{out}: {rows} rows in 3 shard(s)" in stdout

    model = lens.zoo.load(MODEL)  # the same harvest through the API: the same shards
    api = lens.store.harvest(model, corpus, hooks=HOOKS, context_size=CTX, batch_size=BATCH, out_dir=tmp_path / "api",
                             max_tokens=CTX * N_CONTEXTS, shard_contexts=SHARD, progress=False)  # fmt: skip
    assert_same_shards(out, api)
    store = lens.store.open(out)
    ctx = torch.stack([torch.cat([torch.tensor([256]), store.tokens[c * (CTX - 1) : (c + 1) * (CTX - 1)]])
                       for c in range(3)])  # fmt: skip
    _, cache = model.run_with_cache(ctx, names_filter=HOOKS)
    assert torch.equal(store[HOOKS[0]][: 3 * (CTX - 1)], cache[HOOKS[0]][:, 1:].reshape(-1, model.cfg.d_model))

    rc, stdout, _ = cli("info", out, capsys=capsys)
    summary = json.loads(stdout)
    assert rc == 0 and summary["complete"] is True
    assert summary["rows"] == rows == len(store) and summary["shards"] == 3
    assert summary["model"]["name"] == MODEL and summary["source"] == "text-files"
    assert summary["hooks"] == {HOOKS[0]: {"dtype": "float32", "shape": [model.cfg.d_model]},
                                HOOKS[1]: {"dtype": "float32", "shape": [model.cfg.n_heads, CTX]}}  # fmt: skip
    assert summary["context_size"] == CTX and summary["kept_positions_per_context"] == CTX - 1
    assert summary["bytes"] == sum((out / fmt.shard_name(k)).stat().st_size for k in range(3))

    rc, stdout, stderr = cli("verify", out, capsys=capsys)
    assert rc == 0 and stdout.strip() == f"{out}: OK" and stderr == ""

    bad = out / fmt.shard_name(1)
    data = bytearray(bad.read_bytes())
    data[len(data) - 7] ^= 0x01  # one bit of one activation
    bad.write_bytes(bytes(data))
    rc, stdout, stderr = cli("verify", out, capsys=capsys)
    assert rc == 1 and "1 bad shard(s)" in stdout
    assert stderr.count("BAD ") == 1 and f"{bad.name} is corrupted" in stderr
    assert {fmt.shard_name(k) for k in range(3) if fmt.shard_name(k) in stderr} == {bad.name}

    rc, stdout, _ = cli(*harvest_args(MODEL, corpus, out), capsys=capsys)  # re-running repairs it
    assert rc == 0 and cli("verify", out, capsys=capsys)[0] == 0
    assert_same_shards(out, api)


def test_harvest_options(corpus, tmp_path, capsys):
    out = tmp_path / "acts"
    extra = ["--dtype", "bfloat16", "--keep-bos", "--shuffle-seed", "4"]
    assert cli(*harvest_args(MODEL, corpus, out, *extra), capsys=capsys)[0] == 0
    store = lens.store.open(out)
    assert store[HOOKS[0]].dtype == torch.bfloat16 and store.identity["shuffle_seed"] == 4
    assert store.identity["kept_positions"] == list(range(CTX))
    assert store.tokens[0 : N_CONTEXTS * CTX : CTX].eq(256).all()  # every context's BOS is stored
    assert store.index[::CTX][:, 0].tolist() != list(range(N_CONTEXTS))  # shuffled, and the index says how

    model = lens.zoo.load(MODEL)
    api = lens.store.harvest(model, corpus, hooks=HOOKS, context_size=CTX, batch_size=BATCH, out_dir=tmp_path / "api",
                             max_tokens=CTX * N_CONTEXTS, shard_contexts=SHARD, progress=False, dtype=torch.bfloat16,
                             exclude_bos=False, shuffle_seed=4)  # fmt: skip
    assert_same_shards(out, api)


@pytest.mark.filterwarnings("ignore:ignoring out-of-vocab eos_token_id")  # (the tiny config's GPT-2 eos id)
def test_harvest_with_a_local_model_directory(corpus, tmp_path, capsys):
    """A Hugging Face-format directory (a tiny random GPT-2 with a word-level tokenizer.json) loads offline."""
    tokenizers = pytest.importorskip("tokenizers")
    from tests.tiny import saved

    directory = Path(shutil.copytree(saved("gpt2")[0], tmp_path / "gpt2"))
    words = sorted({w for text in DOCS for w in text.split()})
    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))

    out = tmp_path / "acts"
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]
    argv = harvest_args(str(directory), corpus, out)
    argv[argv.index("--hooks") + 1 : argv.index("--context-size")] = hooks
    rc, stdout, _ = cli(*argv, capsys=capsys)
    assert rc == 0 and "shard(s)" in stdout

    model = lens.HookedTransformer.from_pretrained(directory)
    store = lens.store.open(out)
    assert store.identity["model"]["weights_sha256"] == lens.repro.weights_sha256(model)
    assert store.identity["prepend_bos"] is model.cfg.default_prepend_bos is False  # as GPT-2: no BOS, all kept
    assert store.identity["kept_positions"] == list(range(CTX))
    n = len(store) // CTX
    ctx = store.tokens[:].reshape(n, CTX)
    assert 2 not in ctx.tolist() and set(ctx.reshape(-1).tolist()) <= set(vocab.values())  # no <unk>
    first = "def add(a, b): return a + b".split()  # the tokenizer's words, as tokenizers splits them
    assert ctx.reshape(-1).tolist()[: len(first)] == [vocab[w] for w in first]
    for b in range(0, n, BATCH):  # the store's values are the loaded model's
        batch = ctx[b : min(b + BATCH, (b // SHARD + 1) * SHARD, n)]
        _, cache = model.run_with_cache(batch, names_filter=hooks)
        rows = slice(b * CTX, (b + len(batch)) * CTX)
        for h in hooks:
            assert torch.equal(store[h][rows], cache[h].reshape(-1, model.cfg.d_model)), (b, h)


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit, match="nowhere"):
        main(harvest_args(MODEL, tmp_path / "nowhere", tmp_path / "acts"))
    assert not (tmp_path / "acts").exists()
    with pytest.raises(SystemExit) as info:
        main(["explode"])
    assert info.value.code == 2
    with pytest.raises(lens.store.StoreError, match="no manifest.json"):
        main(["verify", str(tmp_path)])


def test_no_bos_and_short_errors(corpus, tmp_path, capsys):
    """``--no-bos`` packs contexts without BOS; a harvest the library refuses exits 2 with a one-line reason."""
    out = tmp_path / "acts"
    assert cli(*harvest_args(MODEL, corpus, out, "--no-bos"), capsys=capsys)[0] == 0
    store = lens.store.open(out)
    assert store.identity["prepend_bos"] is False and store.identity["kept_positions"] == list(range(CTX))
    assert not store.tokens[0 : len(store) : CTX].eq(256).any()  # no context starts with BOS

    argv = harvest_args(MODEL, corpus, out)  # the same folder, now with BOS: a different store
    rc, _, err = cli(*argv, capsys=capsys)
    assert rc == 2 and "error:" in err and "prepend_bos" in err and "Traceback" not in err
    argv[argv.index("--batch-size") + 1] = "0"
    rc, _, err = cli(*argv, capsys=capsys)
    assert rc == 2 and "batch_size=0" in err
