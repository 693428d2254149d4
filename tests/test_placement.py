"""Models larger than one device (:mod:`lens.placement`): offload to disk and "auto" maps sized by ``max_memory``.

The oracle is the same checkpoint loaded into memory on one device: a placed model computes the same logits,
caches, hooked runs and generations (bit for bit on the CPU: the offloaded weights are stored as loaded and
the arithmetic is the same). Bad placements must fail before any weight is read, which the tests show by
asking for them on a checkpoint whose weights file is garbage: the placement error, not the corrupt-file
error, must come out. GPU splits (``cuda:0`` + ``cpu``, two GPUs) are checked by
``benchmarks/gpu_placement_check.py`` on a machine that has them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lens import HookedTransformer
from lens.generation import KVCache
from tests.tiny import copy_dir, hf_tokens, lens_config, saved, variants

pytest.importorskip("accelerate", reason="placement is built on accelerate (the placement / dev extra)")
pytest.importorskip("transformers")


@pytest.fixture(params=variants(), ids=variants())
def variant(request) -> str:
    return request.param


def _load(name: str, **kw) -> HookedTransformer:
    directory, _ = saved(name)
    return HookedTransformer.from_pretrained(directory, dtype=torch.float32, **kw).eval()


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def _offload_map(n_layers: int) -> dict[str, str]:
    """Everything on the CPU except the odd blocks, which go to disk."""
    return {"": "cpu", **{f"blocks.{i}": "disk" for i in range(1, n_layers, 2)}}


# -- parity over every family -------------------------------------------------------------------------
@torch.no_grad()
def test_disk_offload_matches_in_memory(variant, tmp_path):
    """Blocks offloaded to disk: same logits, same cache (gathered on the CPU), same hooked edits."""
    reference = _load(variant)
    n = reference.cfg.n_layers
    placed = _load(variant, device_map=_offload_map(n), offload_folder=tmp_path)
    assert placed.placement.offloaded == frozenset(range(1, n, 2))
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".dat"]  # the weights really are on disk
    assert {p.device.type for p in placed.parameters()} <= {"cpu", "meta"}
    toks = hf_tokens(2, 12)
    _same(placed(toks), reference(toks))

    logits, cache = placed.run_with_cache(toks, cache_device="cpu")
    ref_logits, ref_cache = reference.run_with_cache(toks)
    _same(logits, ref_logits)
    assert set(cache.keys()) == set(ref_cache.keys())
    for name in ref_cache.keys():
        _same(cache[name], ref_cache[name])

    def scale(x, hook):  # an edit inside an offloaded block changes everything after it the same way
        return x * 0.5

    hooks = [(f"blocks.{min(1, n - 1)}.attn.hook_z", scale)]
    _same(placed.run_with_hooks(toks, fwd_hooks=hooks), reference.run_with_hooks(toks, fwd_hooks=hooks))


@torch.no_grad()
def test_auto_map_with_max_memory_offloads_the_rest(variant, tmp_path):
    """``device_map="auto"`` with a CPU budget smaller than the weights: the blocks that do not fit go to disk,
    the embedding and unembedding stay, and the logits and greedy generation are unchanged."""
    reference = _load(variant)
    cfg = reference.cfg
    root = sum(p.numel() * 4 for name, p in reference.named_parameters() if not name.startswith("blocks."))
    block = sum(p.numel() * 4 for p in reference.blocks[0].parameters())
    budget = root + block * 3 // 2  # room for the root's modules and about one block (accelerate keeps one free)
    placed = _load(variant, device_map="auto", max_memory={"cpu": budget}, offload_folder=tmp_path)
    where = placed.placement.device_map
    assert where["embed"] == "cpu" and where["unembed"] == "cpu"
    assert placed.placement.offloaded and all(where[f"blocks.{i}"] == "disk" for i in placed.placement.offloaded)
    resident = sum(p.numel() * 4 for p in placed.parameters() if not p.is_meta)
    assert resident <= budget
    toks = hf_tokens(2, 10)
    _same(placed(toks), reference(toks))
    prompt = hf_tokens(1, 6)
    kw = dict(max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False)
    assert torch.equal(placed.generate(prompt, **kw), reference.generate(prompt, **kw))
    assert cfg.n_layers == len(placed.block_devices())


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_loading_a_few_rows_at_a_time_changes_nothing(variant, dtype, tmp_path, monkeypatch):
    """With a chunk size of a few rows, every large tensor is read a chunk at a time: straight into resident
    parameters, and written through to the offload folder for offloaded ones (a slice per write where the
    file's layout allows, else assembled first). Both give the model loaded whole, bit for bit."""
    import lens.loading

    directory, _ = saved(variant, dtype=dtype)
    load = lambda **kw: HookedTransformer.from_pretrained(directory, dtype=dtype, **kw).eval()  # noqa: E731
    reference = load()
    n = reference.cfg.n_layers
    monkeypatch.setattr(lens.loading, "CHUNK_BYTES", 96)  # a handful of rows of the tiny models' tensors
    chunked = load()
    placed = load(device_map=_offload_map(n), offload_folder=tmp_path)
    for name, p in reference.named_parameters():
        _same(chunked.get_parameter(name), p)
    toks = hf_tokens(2, 9)
    _same(placed(toks), reference(toks))


def test_a_non_float_tensor_read_in_chunks_is_named(tmp_path, monkeypatch):
    """A float weight stored as integers is refused on the chunked path too (in memory and offloaded)."""
    from safetensors.torch import load_file, save_file

    import lens.loading

    directory, _ = saved("llama3")
    broken = copy_dir(directory, tmp_path / "llama3")
    state = load_file(broken / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    state[name] = state[name].to(torch.int32)
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    monkeypatch.setattr(lens.loading, "CHUNK_BYTES", 96)
    for kw in ({}, dict(device_map={"": "cpu", "blocks.1": "disk"}, offload_folder=tmp_path / "offload")):
        with pytest.raises(ValueError, match=f"{name}.*torch.int32"):
            HookedTransformer.from_pretrained(broken, **kw)
    assert sorted((tmp_path / "offload").iterdir()) == []


# -- generation, patching, gradients --------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    reference = _load("llama3")
    folder = tmp_path_factory.mktemp("offload")
    placed = _load("llama3", device_map=_offload_map(reference.cfg.n_layers), offload_folder=folder)
    return reference, placed


@torch.no_grad()
@pytest.mark.parametrize(
    "settings",
    [
        dict(do_sample=False),
        dict(num_beams=3, do_sample=False),
        dict(do_sample=True, temperature=0.8, top_k=20, seed=3),
    ],
    ids=["greedy", "beam", "sampling"],
)
def test_generate_on_an_offloaded_model(llama_pair, settings):
    reference, placed = llama_pair
    prompts = hf_tokens(2, 5, seed=4)
    kw = dict(max_new_tokens=7, stop_at_eos=False, verbose=False, **settings)
    if "seed" in kw:
        seed = kw.pop("seed")
        torch.manual_seed(seed)
        ref = reference.generate(prompts, **kw)
        torch.manual_seed(seed)
        out = placed.generate(prompts, **kw)
    else:
        ref, out = reference.generate(prompts, **kw), placed.generate(prompts, **kw)
    assert torch.equal(out, ref)


def test_gradients_flow_through_offloaded_blocks(llama_pair):
    """Attribution through a placed model: the gradient at the embedding equals the in-memory model's."""
    reference, placed = llama_pair
    toks = hf_tokens(1, 8)
    grads = []
    for model in (reference, placed):
        store = {}

        def keep(x, hook, store=store):
            x.retain_grad()
            store["x"] = x

        with model.hooks(fwd_hooks=[("hook_embed", keep)]):
            model(toks)[0, -1, 3].backward()
        grads.append(store["x"].grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)


def test_kv_cache_layer_devices_must_match_the_layers(llama_pair):
    """(Each layer's store on its block's device is checked on GPUs by benchmarks/gpu_placement_check.py.)"""
    _, placed = llama_pair
    with pytest.raises(ValueError, match="layer_devices has 1 entries; the model has 2 layers"):
        KVCache(placed.cfg, 1, 8, layer_devices=[torch.device("cpu")])


# -- moves --------------------------------------------------------------------------------------------
def test_an_offloaded_model_refuses_to_move_or_cast(llama_pair):
    _, placed = llama_pair
    with pytest.raises(ValueError, match="offloads 1 block.*cannot become torch.float16"):
        placed.half()
    with pytest.raises(ValueError, match="cannot become torch.bfloat16"):
        placed.to(torch.bfloat16)
    assert placed.cfg.dtype == torch.float32 and placed.embed.weight.dtype == torch.float32
    placed.to("cpu")  # already there: a no-op, not an error
    assert placed.placement is not None


@torch.no_grad()
def test_an_all_cpu_map_is_an_ordinary_model(tmp_path):
    """A map without offloading places every block; moving it later clears the placement."""
    reference = _load("gpt2")
    placed = _load("gpt2", device_map={"embed": "cpu", "pos_embed": "cpu", "blocks": "cpu", "ln_final": "cpu",
                                       "unembed": "cpu"})  # fmt: skip
    assert placed.placement.offloaded == frozenset()
    toks = hf_tokens(1, 9)
    _same(placed(toks), reference(toks))
    placed.half()
    assert placed.cfg.dtype == torch.float16 and placed.placement is not None


@torch.no_grad()
def test_a_model_object_can_be_placed(tmp_path):
    directory, hf = saved("qwen3")
    reference = HookedTransformer.from_pretrained(hf).eval()
    placed = HookedTransformer.from_pretrained(hf, device_map={"": "cpu", "blocks.0": "disk"}, offload_folder=tmp_path)
    assert placed.placement.offloaded == frozenset({0})
    toks = hf_tokens(2, 7)
    _same(placed(toks), reference(toks))


def test_single_device_maps_are_the_device():
    directory, _ = saved("gpt2")
    model = HookedTransformer.from_pretrained(directory, device_map="cpu")
    assert model.placement is None and str(model.cfg.device) == "cpu"
    assert HookedTransformer.from_pretrained(directory, n_devices=1).placement is None


# -- bad input, before any weight is read ---------------------------------------------------------------
@pytest.fixture(scope="module")
def garbage_weights(tmp_path_factory) -> Path:
    """A llama3 checkpoint whose weights file is not safetensors: any error but a placement one means the
    weights were read first."""
    directory, _ = saved("llama3")
    broken = copy_dir(directory, tmp_path_factory.mktemp("broken") / "llama3")
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    return broken


def _placement_error(directory: Path, match: str, exc=ValueError, **kw) -> None:
    with pytest.raises(exc, match=match):
        HookedTransformer.from_pretrained(directory, **kw)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(device_map={"": "tpu"}), r"device_map\[''\]='tpu'.*'cpu', 'cuda:N'"),
        (dict(device_map="tpu:0"), r"device_map='tpu:0' is not a device|lens places modules on"),
        (dict(device_map={"": "cpu", "blocks.1": "cuda:0"}), r"'cuda:0', but this machine has 0 cuda device"),
        (dict(device_map={"embed": "cpu", "blocks": "cpu", "ln_final": "cpu"}), r"leaves \['unembed'\] unplaced"),
        (dict(device_map={"": "cpu", "decoder": "cpu"}), r"names 'decoder', which is not a module"),
        (dict(device_map={"": "cpu", "blocks.0.attn": "disk"}), r"'blocks.0.attn' splits block 0"),
        (dict(device_map={"": "cpu", "unembed": "disk"}), r"places 'unembed' on 'disk'.*only blocks"),
        (dict(device_map={"": "cpu", "blocks.1": "disk"}), r"blocks.1 on 'disk'; pass offload_folder"),
        (dict(device_map="auto", max_memory={"cpu": 1000}), r"max_memory\['cpu'\]=1000 bytes is too small"),
        (dict(device_map="auto", max_memory={"cpu": "lots"}), r"max_memory\['cpu'\]='lots' is not a size"),
        (dict(device_map="auto", max_memory={"cpu": 0}), r"must be more than 0 bytes"),
        (dict(device_map="auto", max_memory={"cuda:3": "1GB"}), r"'cuda:3', but this machine has 0 cuda"),
        (dict(device_map="cpu", max_memory={"cpu": "1GB"}), r"puts the whole model on one device"),
        (
            dict(
                device_map={"embed": "cpu", "blocks": "disk", "ln_final": "cpu", "unembed": "cpu"},
                max_memory={"cpu": "1GB"},
            ),
            r"an explicit device_map would ignore it",
        ),  # fmt: skip
        (dict(device_map={}), r"empty dict"),
        (dict(device="cpu", device_map="auto"), r"either device='cpu' or device_map"),
        (dict(n_devices=2), r"n_devices=2 from cuda:0 needs cuda devices 0..1, but this machine has 0"),
        (dict(n_devices=0), r"n_devices must be >= 1, got 0"),
        (dict(n_devices=2, device_map="auto"), r"either n_devices"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_placements_fail_before_weights_are_read(garbage_weights, kw, match):
    _placement_error(garbage_weights, match, **kw)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(device_map=["cpu"]), r"device_map must be .* got list"),
        (dict(device_map={0: "cpu"}), r"keys are module names"),
        (dict(device_map="auto", max_memory=["1GB"]), r"max_memory must be a non-empty dict"),
        (dict(device_map="auto", max_memory={"cpu": 1.5}), r"max_memory\['cpu'\] must be bytes"),
        (dict(n_devices="2"), r"n_devices must be a positive int, got str"),
        (dict(device_map="auto", offload_folder=3), r"offload_folder must be a directory path, got int"),
    ],
)
def test_wrongly_typed_placements(garbage_weights, kw, match):
    _placement_error(garbage_weights, match, exc=TypeError, **kw)


def test_an_unwritable_offload_folder_is_named(garbage_weights, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    _placement_error(
        garbage_weights, r"offload_folder='.*a-file/sub' cannot be written",
        device_map={"": "cpu", "blocks.1": "disk"}, offload_folder=blocker / "sub",
    )  # fmt: skip


def test_weight_processing_with_offloading_is_refused(garbage_weights, tmp_path):
    _placement_error(
        garbage_weights, r"fold_ln rewrite every block's weights in memory, but this placement offloads 1 block",
        device_map={"": "cpu", "blocks.1": "disk"}, offload_folder=tmp_path, fold_ln=True,
    )  # fmt: skip


@torch.no_grad()
def test_a_tied_unembedding_stays_with_the_embedding(tmp_path):
    assert lens_config("olmo2_tied").tie_word_embeddings
    reference = _load("olmo2_tied")
    placed = _load("olmo2_tied", device_map={"": "cpu", "blocks.0": "disk"}, offload_folder=tmp_path)
    assert placed.unembed.W_U.data_ptr() == placed.embed.W_E.data_ptr()  # still one tensor
    toks = hf_tokens(1, 6)
    _same(placed(toks), reference(toks))


# -- faults -------------------------------------------------------------------------------------------
def test_a_failed_load_leaves_no_offload_files(tmp_path):
    """A checkpoint that turns out to lack the final norm fails after blocks were written to disk: the error
    names the missing tensor, nothing is returned and the offloaded files are gone."""
    from safetensors.torch import load_file, save_file

    directory, _ = saved("llama3")
    broken = copy_dir(directory, tmp_path / "llama3")
    state = load_file(broken / "model.safetensors")
    state.pop("model.norm.weight")
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    folder = tmp_path / "offload"
    with pytest.raises((ValueError, KeyError), match="model.norm.weight"):
        HookedTransformer.from_pretrained(broken, device_map={"": "cpu", "blocks.0": "disk", "blocks.1": "disk"},
                                          offload_folder=folder)  # fmt: skip
    assert sorted(p.name for p in folder.iterdir()) == []


def test_offload_index_is_accelerates(tmp_path):
    """The offload folder is accelerate's format (index.json + one .dat per tensor), readable by accelerate;
    each tensor is stored in its parameter's memory order."""
    from accelerate.utils import OffloadedWeightsLoader

    _load("llama3", device_map={"": "cpu", "blocks.1": "disk"}, offload_folder=tmp_path)
    index = json.loads((tmp_path / "index.json").read_text())
    assert index and all(name.startswith("blocks.1.") for name in index)
    loader = OffloadedWeightsLoader(save_folder=str(tmp_path))
    reference = _load("llama3")
    for name in index:  # each tensor as it lies in memory (a transposed weight stays transposed)
        p = reference.get_parameter(name).detach()
        _same(loader[name].reshape(-1), p.as_strided((p.numel(),), (1,)))


@torch.no_grad()
def test_move_model_modules_to_device_keeps_a_placement(llama_pair):
    """TransformerLens's ``move_model_modules_to_device`` leaves a placed model where the placement put it."""
    reference, placed = llama_pair
    before = placed.block_devices()
    assert placed.move_model_modules_to_device() is placed
    assert placed.block_devices() == before and placed.placement is not None
    toks = hf_tokens(1, 5)
    _same(placed(toks), reference(toks))
