"""Head detectors (lens.head_detectors): exact scores on forced patterns, and a trained model's heads."""

import pytest
import torch

import lens
from lens import head_detectors as hd
from tests.conftest import VOCAB, tiny_model
from tests.test_attribution import PERIOD, train_induction_model

GEN = torch.Generator().manual_seed(5)


def test_target_patterns():
    tokens = torch.tensor([[9, 1, 2, 1, 2]])
    assert hd.previous_token_pattern(tokens)[0].nonzero().tolist() == [[1, 0], [2, 1], [3, 2], [4, 3]]
    assert hd.duplicate_token_pattern(tokens)[0].nonzero().tolist() == [[3, 1], [4, 2]]
    # Query 3 (token 1) -> key 2 (came after the earlier 1); query 4 (token 2) -> key 3.
    assert hd.induction_pattern(tokens)[0].nonzero().tolist() == [[3, 2], [4, 3]]


def _force(pattern_for_head: dict[int, torch.Tensor], layer: int):
    """A hook replacing chosen heads' attention rows that have targets by the normalised targets."""

    def hook(pattern, hook):
        for head, det in pattern_for_head.items():
            det = det.float()
            rows = det.sum(-1, keepdim=True)
            forced = torch.where(rows > 0, det / rows.clamp_min(1), pattern[:, head])
            pattern[:, head] = forced
        return pattern

    return (f"blocks.{layer}.attn.hook_pattern", hook)


def test_scores_on_forced_patterns():
    model = tiny_model("llama")
    tokens = hd.repeated_tokens(model, seq_len=6, batch=3, seed=0)
    prev, ind = hd.previous_token_pattern(tokens), hd.induction_pattern(tokens)
    hooks = [_force({1: prev}, layer=0), _force({2: ind}, layer=1)]
    with model.hooks(fwd_hooks=hooks):
        scores = hd.detect_heads(model, tokens)
        single = hd.induction_scores(model, tokens)
    assert scores["previous_token"].shape == (2, 4)
    assert scores["previous_token"][0, 1].item() == pytest.approx(1.0, abs=1e-6)
    assert scores["induction"][1, 2].item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(single, scores["induction"])
    others = scores["induction"].flatten()[torch.arange(8) != 6]
    assert (others < 0.9).all()
    # A cache of the same run gives the same scores without another forward.
    with model.hooks(fwd_hooks=hooks):
        _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(hd.previous_token_scores(model, tokens, cache=cache), scores["previous_token"])


def test_trained_model_has_an_induction_head():
    model = train_induction_model()
    tokens = torch.cat(
        [torch.full((8, 1), model.cfg.d_vocab - 1), torch.randint(0, 24, (8, PERIOD), generator=GEN).repeat(1, 2)], 1
    )
    scores = hd.detect_heads(model, tokens)
    assert scores["induction"].max() > 0.5
    random_model = lens.HookedTransformer(model.cfg, seed=1)
    assert hd.induction_scores(random_model, tokens).max() < scores["induction"].max() - 0.3


def test_repeated_tokens():
    model = tiny_model("gpt2", d_vocab=259)
    assert hd.repeated_tokens(model, 5, batch=2).shape == (2, 10)  # no tokenizer: no BOS
    model.set_tokenizer(lens.Tokenizer.byte_level())
    toks = hd.repeated_tokens(model, 5, batch=2, seed=3)
    assert toks.shape == (2, 11) and (toks[:, 0] == 256).all()
    assert torch.equal(toks[:, 1:6], toks[:, 6:]) and (toks[:, 1:] < 256).all()
    assert torch.equal(toks, hd.repeated_tokens(model, 5, batch=2, seed=3))


def test_bad_input():
    model = tiny_model("gpt2")
    tokens = torch.arange(6)[None]  # no repeated tokens
    with pytest.raises(ValueError, match="no targets"):
        hd.duplicate_token_scores(model, tokens)
    with pytest.raises(ValueError, match="unknown detector"):
        hd.detect_heads(model, tokens, kinds=["copying"])
    with pytest.raises(ValueError, match="detection_pattern has shape"):
        hd.head_scores(model, tokens, torch.ones(5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="seq_len"):
        hd.repeated_tokens(model, 0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        hd.previous_token_scores(model, tokens + VOCAB)
