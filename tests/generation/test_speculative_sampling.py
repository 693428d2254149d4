"""Speculative sampling keeps the target distribution exactly (Leviathan et al. / Chen et al.).

On a tiny model with a 5-token vocabulary the exact joint distribution of the first three generated tokens
under plain sampling is computed by enumerating every prefix (full forwards, lens's HF-exact processors:
temperature, top-k, top-p, min-p, repetition penalty). Speculative generation with a draft model of other
weights (and with prompt lookup's point-mass draft) is sampled over many seeds and rows, and a chi-square test
compares the empirical joint with the exact one. The test has power: the same samples are far from the draft
model's own distribution.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from lens.generation.sampling import SamplingConfig
from tests.tiny import tiny_model

VOCAB, NEW, ROWS, SEEDS = 5, 4, 8, 300  # 2400 samples of the first 3 tokens (the 4th is the bonus slot)
PROMPT = torch.tensor([[1, 2, 3, 1, 2, 4, 1]])


def peaked(seed: int):
    model = tiny_model("llama", seed=seed, d_vocab=VOCAB)
    with torch.no_grad():
        model.unembed.weight.mul_(8)  # O(1) logits: distributions far from uniform, far from one-hot
    return model


@pytest.fixture(scope="module")
def models():
    return peaked(0), peaked(5)


@torch.no_grad()
def exact_joint(model, sampler: SamplingConfig, n: int = 3) -> dict[tuple[int, ...], float]:
    """P(x1..xn) of plain sampling: the product of the processed next-token distributions along each prefix."""
    probs: dict[tuple[int, ...], float] = {(): 1.0}
    for _ in range(n):
        prefixes = list(probs)
        seqs = torch.cat((PROMPT.expand(len(prefixes), -1), torch.tensor([list(p) for p in prefixes]).long()), 1)
        logits = model(seqs)[:, -1].float()
        p_next = sampler.process(logits, seqs).softmax(-1)
        probs = {
            (*prefix, tok): probs[prefix] * float(p_next[i, tok])
            for i, prefix in enumerate(prefixes)
            for tok in range(VOCAB)
        }
    return probs


def chi_square_p(counts: dict[tuple[int, ...], int], expected: dict[tuple[int, ...], float], total: int) -> float:
    """p-value of Pearson's chi-square, cells with expected count < 5 pooled into one."""
    obs, exp, pool_o, pool_e = [], [], 0.0, 0.0
    for cell, p in expected.items():
        e, o = p * total, counts.get(cell, 0)
        if e < 5:
            pool_o, pool_e = pool_o + o, pool_e + e
        else:
            obs.append(o), exp.append(e)
    if pool_e > 0:
        obs.append(pool_o), exp.append(pool_e)
    o, e = torch.tensor(obs, dtype=torch.float64), torch.tensor(exp, dtype=torch.float64)
    stat = ((o - e) ** 2 / e).sum()
    df = torch.tensor(len(obs) - 1, dtype=torch.float64)
    return float(torch.special.gammaincc(df / 2, stat / 2))  # the chi-square survival function


SAMPLERS = [
    dict(),
    dict(temperature=0.7),
    dict(top_k=3),
    dict(top_p=0.8),
    dict(min_p=0.2),
    dict(top_k=4, top_p=0.9, temperature=0.8, repetition_penalty=1.3),
]


@pytest.mark.parametrize("draft", ["assistant", "prompt_lookup"])
@pytest.mark.parametrize(
    "kw", SAMPLERS, ids=["-".join(f"{k}={v}" for k, v in kw.items()) or "plain" for kw in SAMPLERS]
)
def test_speculative_sampling_keeps_the_distribution(models, kw, draft):
    target, small = models
    sampler = SamplingConfig(do_sample=True, **kw)
    spec = (
        dict(assistant_model=small, num_assistant_tokens=2)
        if draft == "assistant"
        else dict(prompt_lookup_num_tokens=2)
    )
    counts: dict[tuple[int, ...], int] = {}
    proposed = accepted = 0
    prompt = PROMPT.expand(ROWS, -1)
    for seed in range(SEEDS):
        out = target.generate(
            prompt, NEW, do_sample=True, seed=seed, stop_at_eos=False, return_stats=True, **kw, **spec
        )
        proposed, accepted = proposed + out.stats.proposed, accepted + out.stats.accepted
        for row in out.output[:, PROMPT.shape[1] : PROMPT.shape[1] + 3].tolist():
            counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    assert 0 < accepted < proposed  # proposals were both accepted and rejected
    total = ROWS * SEEDS
    assert chi_square_p(counts, exact_joint(target, sampler), total) > 1e-3
    if draft == "assistant":  # power: the draft's own distribution is clearly rejected by the same samples
        assert chi_square_p(counts, exact_joint(small, sampler), total) < 1e-6


def test_batch_one_rows_too(models):
    """Batch 1 (no shared-prefix truncation across rows): the same check on one sampler setting."""
    target, small = models
    kw = dict(top_k=4, temperature=0.9)
    counts: dict[tuple[int, ...], int] = {}
    for seed in range(1500):
        out = target.generate(PROMPT, NEW, do_sample=True, seed=seed, stop_at_eos=False, assistant_model=small,
                              num_assistant_tokens=3, **kw)  # fmt: skip
        key = tuple(out[0, PROMPT.shape[1] : PROMPT.shape[1] + 3].tolist())
        counts[key] = counts.get(key, 0) + 1
    assert chi_square_p(counts, exact_joint(target, SamplingConfig(do_sample=True, **kw)), 1500) > 1e-3


def test_exact_joint_sums_to_one(models):
    joint = exact_joint(models[0], SamplingConfig(do_sample=True, top_p=0.8))
    assert len(joint) == VOCAB**3 and abs(sum(joint.values()) - 1) < 1e-6
    assert set(joint) == set(itertools.product(range(VOCAB), repeat=3))
