"""Quick model checks with TransformerLens's names: :func:`test_prompt`, :func:`lm_accuracy`, :func:`sample_logits`.

The model is duck-typed: :func:`test_prompt` uses only ``model.to_tokens``, ``model.to_str_tokens`` and
``model(tokens)`` (logits), so it works with any lens model (and with a TransformerLens one).

>>> test_prompt("The capital of France is", "Paris", model)   # doctest: +SKIP
Tokenized prompt: ['<|endoftext|>', 'The', ' capital', ' of', ' France', ' is']
Tokenized answer: [' Paris']
Performance on answer token:
Rank: 0        Logit: 17.13 Prob: 63.28% Token: | Paris|
...
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lens.utilities.misc import USE_DEFAULT_VALUE

__all__ = ["lm_accuracy", "sample_logits", "test_prompt"]


def lm_accuracy(
    logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"], per_token: bool = False
) -> Float[Tensor, ""] | Bool[Tensor, "batch pos_minus_1"]:
    """Top-1 next-token accuracy: does the argmax at position i equal token i + 1?

    ``per_token=True`` returns the ``[batch, pos - 1]`` booleans; otherwise their mean.

    >>> lm_accuracy(torch.eye(3).roll(1, dims=-1)[None], torch.tensor([[0, 1, 2]]))  # position i predicts i + 1
    tensor(1.)
    """
    if logits.ndim != 3 or tokens.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be [batch, pos, d_vocab] and tokens [batch, pos] with the same batch and pos, got "
            f"{tuple(logits.shape)} and {tuple(tokens.shape)}"
        )
    if logits.shape[1] < 2:
        raise ValueError(f"next-token accuracy needs at least 2 positions, got {logits.shape[1]}")
    correct = logits.argmax(dim=-1)[:, :-1] == tokens[:, 1:].to(logits.device)
    return correct if per_token else correct.sum() / correct.numel()


def sample_logits(
    final_logits: Float[Tensor, "batch d_vocab"],
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
    freq_penalty: float = 0.0,
    tokens: Int[Tensor, "batch pos"] | None = None,
) -> Int[Tensor, "batch"]:
    """Sample one token per row from logits, as TransformerLens's ``generate`` did.

    ``temperature == 0`` is greedy (argmax). Otherwise the logits are divided by ``temperature``, lowered by
    ``freq_penalty`` times each token's count in ``tokens`` (needed then), and filtered by ``top_k`` (keep
    the k largest, ties included) or else ``top_p`` (the smallest set of most likely tokens whose
    probability reaches ``top_p``); then one token is drawn. The input is not modified.

    >>> sample_logits(torch.tensor([[0.0, 5.0, 1.0]]), temperature=0.0)
    tensor([1])
    """
    if final_logits.ndim != 2:
        raise ValueError(f"final_logits must be [batch, d_vocab], got shape {tuple(final_logits.shape)}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0.0:
        return final_logits.argmax(dim=-1)
    logits = final_logits / temperature
    if freq_penalty > 0:
        if tokens is None or tokens.ndim != 2 or tokens.shape[0] != logits.shape[0]:
            raise ValueError("a frequency penalty needs tokens=[batch, pos] (the ids generated so far)")
        counts = torch.stack([torch.bincount(row, minlength=logits.shape[-1]) for row in tokens.to(logits.device)])
        logits = logits - freq_penalty * counts[:, : logits.shape[-1]]
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"top_k has to be an int greater than 0, got {top_k!r}")
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    elif top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p has to be in (0, 1], got {top_p!r}")
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the first always stays)
        drop_sorted = torch.zeros_like(cumulative, dtype=torch.bool)
        drop_sorted[..., 1:] = cumulative[..., :-1] > top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.distributions.Categorical(logits=logits.float()).sample()


def _answer_list(answer: str | list[str], prepend_space: bool) -> list[str]:
    answers = [answer] if isinstance(answer, str) else list(answer)
    if not answers or not all(isinstance(a, str) for a in answers):
        raise ValueError(f"answer must be a string or a non-empty list of strings, got {answer!r}")
    return [a if not prepend_space or a.startswith(" ") else " " + a for a in answers]


def test_prompt(
    prompt: str,
    answer: str | list[str],
    model: Any,
    prepend_space_to_answer: bool = True,
    print_details: bool = True,
    prepend_bos: bool | None = USE_DEFAULT_VALUE,
    top_k: int = 10,
) -> None:
    """Print how well the model predicts ``answer`` after ``prompt``: rank, logit and probability of each
    answer token, and the ``top_k`` tokens at each answer position (TransformerLens's format).

    A multi-token answer is scored token by token (teacher forcing). A list of answers compares their first
    tokens as alternative completions. ``prepend_space_to_answer`` adds a leading space when missing.
    ``print_details=False`` prints only the final ranks. Returns None.

    >>> test_prompt("Why did the elephant cross the", "road", model)   # doctest: +SKIP
    Tokenized prompt: ['<|endoftext|>', 'Why', ' did', ' the', ' elephant', ' cross', ' the']
    Tokenized answer: [' road']
    Performance on answer token:
    Rank: 2        Logit: 14.24 Prob:  3.51% Token: | road|
    Top 0th token. Logit: 14.51 Prob:  4.59% Token: | ground|
    ...
    Ranks of the answer tokens: [(' road', 2)]
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0, got {top_k!r}")
    answers = _answer_list(answer, prepend_space_to_answer)
    d_vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    if isinstance(d_vocab, int) and top_k > d_vocab:
        raise ValueError(f"top_k={top_k} exceeds the vocabulary size {d_vocab}")
    multiple = len(answers) > 1
    prompt_tokens = model.to_tokens(prompt, prepend_bos=prepend_bos)
    answer_tokens = model.to_tokens(answers, prepend_bos=False)
    if multiple:
        answer_tokens = answer_tokens[:, :1]  # alternatives: only the next token is compared
    answer_tokens = answer_tokens.to(prompt_tokens.device)
    tokens = torch.cat([prompt_tokens.expand(len(answers), -1), answer_tokens], dim=1)
    prompt_str = model.to_str_tokens(prompt, prepend_bos=prepend_bos)
    answer_str = [model.to_str_tokens(a, prepend_bos=False) for a in answers]
    n_prompt = prompt_tokens.shape[1]
    n_answer = 1 if multiple else len(answer_str[0])
    if print_details:
        print("Tokenized prompt:", prompt_str)
        print("Tokenized answers:" if multiple else "Tokenized answer:", answer_str if multiple else answer_str[0])
    with torch.no_grad():
        logits = model(tokens)
    if top_k > logits.shape[-1]:
        raise ValueError(f"top_k={top_k} exceeds the vocabulary size {logits.shape[-1]}")
    probs = logits.float().softmax(dim=-1)
    all_ranks = []
    for index in range(n_prompt, n_prompt + n_answer):
        targets = tokens[:, index]
        strs = [a[index - n_prompt] for a in answer_str]
        step_logits, step_probs = logits[:, index - 1], probs[:, index - 1]
        sorted_probs, order = step_probs.sort(dim=-1, descending=True, stable=True)
        ranks = (order == targets[:, None]).int().argmax(-1).tolist()
        all_ranks.append(list(zip(strs, ranks)))
        if not print_details:
            continue
        lines = [
            f"Rank: {ranks[i]: <8} Logit: {step_logits[i, targets[i]].item():5.2f} "
            f"Prob: {step_probs[i, targets[i]].item():6.2%} Token: |{strs[i]}|"
            for i in range(len(answers))
        ]
        print(f"Performance on answer token{'s' if multiple else ''}:\n" + "\n".join(lines))
        top_strs = model.to_str_tokens(order[0, :top_k]) if top_k else []
        for i in range(top_k):
            print(
                f"Top {i}th token. Logit: {step_logits[0, order[0, i]].item():5.2f} "
                f"Prob: {sorted_probs[0, i].item():6.2%} Token: |{top_strs[i]}|"
            )
    print(f"Ranks of the answer tokens: {all_ranks if multiple else [r[0] for r in all_ranks]}")


test_prompt.__test__ = False  # pytest: not a test, despite the name
