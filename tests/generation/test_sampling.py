"""lens.generation.sampling against the transformers logits processors, which serve as the oracle."""

from __future__ import annotations

import types

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lens.generation.sampling import (
    SamplingConfig,
    apply_repetition_penalty,
    apply_temperature,
    min_p_filter,
    process_logits,
    sample_next_token,
    top_k_filter,
    top_p_filter,
    validate_sampling_args,
)

BATCH, VOCAB, T = 4, 100, 24
SEEDS = [0, 1, 2, 3]


def make_logits(seed: int) -> torch.Tensor:
    """Mixed-sign logits; odd seeds are rounded to a coarse grid so ties are everywhere."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(BATCH, VOCAB, generator=g) * 3
    if seed % 2:
        logits = torch.round(logits * 2) / 2
    # A block of exact ties at a mid-high value in every row, and at the top of row 0.
    logits[:, 40:46] = logits.quantile(0.9, dim=-1, keepdim=True)
    logits[0, 50:53] = logits[0].max() + 1
    return logits


def make_history(seed: int) -> torch.Tensor:
    """Random histories with guaranteed repeats."""
    g = torch.Generator().manual_seed(1000 + seed)
    half = torch.randint(0, VOCAB, (BATCH, T // 2), generator=g)
    return torch.cat([half, half.flip(-1)], dim=-1)


def assert_same(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    assert torch.equal(torch.isneginf(ours), torch.isneginf(ref))
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(ours), finite)
    assert torch.allclose(ours[finite], ref[finite], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("penalty", [0.5, 1.2, 2.0])
def test_repetition_penalty_matches_hf(seed, penalty):
    logits, history = make_logits(seed), make_history(seed)
    before = logits.clone()
    ours = apply_repetition_penalty(logits, history, penalty)
    ref = RepetitionPenaltyLogitsProcessor(penalty)(history, logits.clone())
    assert_same(ours, ref)
    assert torch.equal(logits, before)  # not modified in place
    all_ones = torch.ones_like(history)
    assert_same(apply_repetition_penalty(logits, history, penalty, all_ones), ref)


def test_repetition_penalty_once_per_id_and_identity():
    logits = torch.tensor([[2.0, -2.0, 2.0, 0.0]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 0, 0, 1, 1, 3]]), 2.0)
    assert torch.equal(out, torch.tensor([[1.0, -4.0, 2.0, 0.0]]))
    assert apply_repetition_penalty(logits, torch.tensor([[0, 1]]), 1.0) is logits


def test_repetition_penalty_ignores_out_of_vocab_ids_like_hf():
    logits, history = make_logits(0), make_history(0)
    history[:, ::5] += VOCAB  # ids the lm head cannot produce
    ref = RepetitionPenaltyLogitsProcessor(1.5)(history, logits.clone())
    assert_same(apply_repetition_penalty(logits, history, 1.5), ref)


@pytest.mark.parametrize("bool_mask", [False, True])
def test_repetition_penalty_excludes_padding(bool_mask):
    pad = 7
    logits = make_logits(1)
    rows = [torch.tensor(r) for r in ([1, 2, 2, 3], [5, 1], [9, 9, 9, 4, 60, 3], [])]
    history = torch.full((BATCH, T), pad)
    mask = torch.zeros(BATCH, T, dtype=torch.long)
    for i, row in enumerate(rows):  # left-pad rows 0-1, right-pad rows 2-3
        span = slice(T - len(row), T) if i < 2 else slice(0, len(row))
        history[i, span], mask[i, span] = row, 1
    ours = apply_repetition_penalty(logits, history, 1.7, mask.bool() if bool_mask else mask)
    assert torch.equal(ours[:, pad], logits[:, pad])  # pad id only ever appears as padding
    for i, row in enumerate(rows):
        ref = RepetitionPenaltyLogitsProcessor(1.7)(row[None], logits[i : i + 1].clone())
        assert_same(ours[i : i + 1], ref)
    # Sanity: without the mask the pad id would be penalised.
    assert not torch.equal(apply_repetition_penalty(logits, history, 1.7)[:, pad], logits[:, pad])


def test_repetition_penalty_left_padding_matches_hf_prompt_ignore_length():
    logits, history = make_logits(2), make_history(2)
    pad_lengths = torch.tensor([0, 3, 10, T])
    mask = (torch.arange(T)[None] >= pad_lengths[:, None]).long()
    try:
        hf = RepetitionPenaltyLogitsProcessor(1.3, prompt_ignore_length=pad_lengths)
    except TypeError:
        pytest.skip("installed transformers has no prompt_ignore_length")
    assert_same(apply_repetition_penalty(logits, history, 1.3, mask), hf(history, logits.clone()))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("temperature", [0.3, 1.0, 1.7])
def test_temperature_matches_hf(seed, temperature):
    logits = make_logits(seed)
    ref = TemperatureLogitsWarper(temperature)(None, logits.clone())
    assert_same(apply_temperature(logits, temperature), ref)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 3, 5, 10, 17, VOCAB, VOCAB + 50])
def test_top_k_matches_hf(seed, k):
    logits = make_logits(seed)
    ref = TopKLogitsWarper(k)(None, logits.clone())
    assert_same(top_k_filter(logits, k), ref)


def test_top_k_keeps_ties_and_off_values():
    logits = torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0]])
    out = top_k_filter(logits, 2)
    assert torch.equal(torch.isfinite(out), torch.tensor([[True, True, True, True, False]]))
    assert top_k_filter(logits, 0) is logits and top_k_filter(logits, None) is logits
    # Ties straddling the k-th rank in the random rows: more than k survive, exactly like HF.
    assert (torch.isfinite(top_k_filter(make_logits(1), 41)).sum(-1) > 41).any()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("p", [1e-4, 0.1, 0.3, 0.5, 0.8, 0.9, 0.95, 0.999, 1.0])
def test_top_p_matches_hf(seed, p):
    for logits in (make_logits(seed), make_logits(seed) / 4):  # peaked and flat distributions
        ref = TopPLogitsWarper(p)(None, logits.clone())
        ours = top_p_filter(logits, p)
        assert_same(ours, ref)
        assert (torch.isfinite(ours).sum(-1) >= 1).all()


@pytest.mark.parametrize("p, kept", [(0.25, 1), (0.5, 2), (0.75, 3), (0.8, 4)])
def test_top_p_boundary_is_inclusive_like_hf(p, kept):
    """Uniform rows give exact cumulative masses: a token whose mass from below is == 1 - p is removed."""
    logits = torch.zeros(2, 4)
    ours = top_p_filter(logits, p)
    assert_same(ours, TopPLogitsWarper(p)(None, logits.clone()))
    assert (torch.isfinite(ours).sum(-1) == kept).all()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("min_p", [0.0, 0.01, 0.05, 0.2, 0.5, 0.9, 1.0])
def test_min_p_matches_hf(seed, min_p):
    for logits in (make_logits(seed), make_logits(seed) / 4):
        ref = MinPLogitsWarper(min_p)(None, logits.clone())
        assert_same(min_p_filter(logits, min_p), ref)


CHAIN_CASES = [
    dict(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.3),
    dict(temperature=1.0, top_k=None, top_p=0.8, min_p=None, repetition_penalty=1.0),
    dict(temperature=1.5, top_k=5, top_p=None, min_p=0.1, repetition_penalty=0.8),
    dict(temperature=0.5, top_k=0, top_p=1.0, min_p=None, repetition_penalty=2.0),
    dict(temperature=1.2, top_k=50, top_p=0.95, min_p=None, repetition_penalty=1.1),
]


def hf_chain(temperature, top_k, top_p, min_p, repetition_penalty) -> LogitsProcessorList:
    """The list transformers' ``_get_logits_processor`` builds for sampling (same skip rules)."""
    procs = LogitsProcessorList()
    if repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
    if temperature != 1.0:
        procs.append(TemperatureLogitsWarper(temperature))
    if top_k:
        procs.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p))
    if min_p is not None:
        procs.append(MinPLogitsWarper(min_p))
    return procs


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", CHAIN_CASES)
def test_full_chain_matches_hf(seed, case):
    logits, history = make_logits(seed), make_history(seed)
    ref = hf_chain(**case)(history, logits.clone())
    assert_same(process_logits(logits, history, **case), ref)
    assert_same(SamplingConfig(do_sample=True, **case).process(logits, history), ref)


@pytest.mark.parametrize("do_sample", [True, False])
def test_chain_matches_hf_generate_processor_list(do_sample):
    """Use HF's own ``_get_logits_processor`` (private API: skip if its shape changes)."""
    from transformers.generation.utils import GenerationMixin

    case = dict(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.3)
    logits, history = make_logits(3), make_history(3)
    mask = torch.ones_like(history)
    mask[1, :4] = 0
    mask[3, :9] = 0
    stub = types.SimpleNamespace(config=types.SimpleNamespace(is_encoder_decoder=False))
    stub._merge_criteria_processor_list = types.MethodType(GenerationMixin._merge_criteria_processor_list, stub)
    try:
        procs = GenerationMixin._get_logits_processor(
            stub,
            generation_config=GenerationConfig(do_sample=do_sample, **case),
            input_ids_seq_length=T,
            model_kwargs={"attention_mask": mask},
            device="cpu",
        )
    except (AttributeError, TypeError) as err:
        pytest.skip(f"transformers' private _get_logits_processor changed: {err}")
    ref = procs(history, logits.clone())
    ours = SamplingConfig(do_sample=do_sample, **case).process(logits, history, mask)
    assert_same(ours, ref)
    assert torch.equal(sample_next_token(ours, do_sample=False), ref.argmax(-1))


def test_greedy_config_applies_only_the_penalty():
    logits, history = make_logits(1), make_history(1)
    cfg = SamplingConfig(do_sample=False, temperature=0.0, top_k=3, top_p=0.1, repetition_penalty=1.4)
    assert_same(cfg.process(logits, history), apply_repetition_penalty(logits, history, 1.4))
    assert cfg.process(logits) is logits  # no history: nothing to penalise


def test_greedy_is_argmax():
    logits = make_logits(1)
    assert torch.equal(sample_next_token(logits, do_sample=False), logits.argmax(-1))
    tied = torch.tensor([[1.0, 3.0, 3.0], [5.0, 5.0, 0.0]])
    assert sample_next_token(tied, do_sample=False).tolist() == [1, 0]  # first max, as torch.argmax
    bf16 = logits.bfloat16()
    assert torch.equal(SamplingConfig().sample(bf16), bf16.argmax(-1))


def test_greedy_matches_argmax_on_ties_nan_and_inf():
    """Greedy picks with ``max(...).indices``; it must agree with ``torch.argmax`` (what HF uses) everywhere."""
    gen = torch.Generator().manual_seed(7)
    for n in (2, 17, 1000, 50257):
        x = torch.randint(0, 4, (6, n), generator=gen).float()  # many ties
        x[1, torch.randint(0, n, (2,), generator=gen)] = float("nan")
        x[2] = float("-inf")
        x[3, -1] = float("inf")
        x[4] = 0.0
        assert torch.equal(sample_next_token(x, do_sample=False), x.argmax(-1)), n


@pytest.mark.parametrize("seed", SEEDS)
def test_seeded_sampling_reproduces(seed):
    scores = process_logits(make_logits(seed), make_history(seed), temperature=0.9, top_p=0.95, top_k=30)
    draws = [
        torch.stack([sample_next_token(scores, do_sample=True, generator=g) for _ in range(5)])
        for g in (torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed))
    ]
    assert torch.equal(draws[0], draws[1])
    assert draws[0].shape == (5, BATCH) and draws[0].dtype == torch.long
    assert torch.isfinite(scores.gather(1, draws[0].T)).all()  # never a filtered token
    # Same RNG stream as HF's sample step: softmax then torch.multinomial(probs, 1).
    torch.manual_seed(seed)
    ref = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
    torch.manual_seed(seed)
    assert torch.equal(sample_next_token(scores, do_sample=True), ref)


def test_sampling_with_single_survivor_is_deterministic():
    logits = make_logits(0)
    scores = top_k_filter(logits + torch.arange(VOCAB) * 1e-3, 1)  # break ties: one survivor per row
    out = sample_next_token(scores, do_sample=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, scores.argmax(-1))


GOOD = dict(do_sample=True, temperature=1.0, top_k=None, top_p=None, min_p=None, repetition_penalty=1.0)


@pytest.mark.parametrize(
    "override, exc, words",
    [
        (dict(temperature=0.0), ValueError, ["temperature", "0.0", "> 0"]),
        (dict(temperature=-1.5), ValueError, ["temperature", "-1.5"]),
        (dict(temperature=float("nan")), ValueError, ["temperature", "nan"]),
        (dict(top_p=0.0), ValueError, ["top_p", "0.0", "(0, 1]"]),
        (dict(top_p=1.5), ValueError, ["top_p", "1.5", "(0, 1]"]),
        (dict(top_p=-0.1), ValueError, ["top_p", "-0.1"]),
        (dict(min_p=-0.01), ValueError, ["min_p", "-0.01", "[0, 1]"]),
        (dict(min_p=1.01), ValueError, ["min_p", "1.01", "[0, 1]"]),
        (dict(top_k=-1), ValueError, ["top_k", "-1", ">= 0"]),
        (dict(repetition_penalty=0.0), ValueError, ["repetition_penalty", "0.0", "> 0"]),
        (dict(repetition_penalty=-2.0), ValueError, ["repetition_penalty", "-2.0"]),
        (dict(temperature="hot"), TypeError, ["temperature", "'hot'"]),
        (dict(temperature=None), TypeError, ["temperature", "None"]),
        (dict(top_k=2.5), TypeError, ["top_k", "2.5"]),
        (dict(top_k=True), TypeError, ["top_k", "True"]),
        (dict(top_p="0.9"), TypeError, ["top_p", "'0.9'"]),
        (dict(min_p=[0.1]), TypeError, ["min_p"]),
        (dict(repetition_penalty="1.2"), TypeError, ["repetition_penalty"]),
        (dict(do_sample="yes"), TypeError, ["do_sample", "'yes'"]),
    ],
)
def test_bad_arguments_raise(override, exc, words):
    kwargs = {**GOOD, **override}
    for call in (lambda: validate_sampling_args(**kwargs), lambda: SamplingConfig(**kwargs)):
        with pytest.raises(exc) as info:
            call()
        assert all(w in str(info.value) for w in words), str(info.value)
    if "do_sample" not in override:
        sampling_kwargs = {k: v for k, v in kwargs.items() if k != "do_sample"}
        with pytest.raises(exc):
            process_logits(make_logits(0), make_history(0), **sampling_kwargs)


def test_good_arguments_and_greedy_temperature_accepted():
    validate_sampling_args(**GOOD)
    validate_sampling_args(**{**GOOD, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 0.5})
    SamplingConfig(do_sample=False, temperature=0.0)  # greedy ignores temperature, as in HF


def test_single_function_errors():
    logits, history = make_logits(0), make_history(0)
    for bad in (
        lambda: apply_temperature(logits, 0.0),
        lambda: top_k_filter(logits, -3),
        lambda: top_p_filter(logits, 0.0),
        lambda: top_p_filter(logits, 1.1),
        lambda: min_p_filter(logits, 2.0),
        lambda: apply_repetition_penalty(logits, history, 0.0),
        lambda: apply_repetition_penalty(logits, history[:2], 1.5),
        lambda: apply_repetition_penalty(logits, history, 1.5, history_mask=torch.ones(BATCH, 3)),
    ):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(TypeError):
        top_k_filter(logits, 2.0)
    with pytest.raises(TypeError):
        apply_temperature(logits, "1")
