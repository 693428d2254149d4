"""Build (and execute) the demo notebooks from the cell sources below.

    python demos/build_notebooks.py            # write demos/*.ipynb and execute them in place (outputs saved)
    python demos/build_notebooks.py --no-run   # write them without executing

The test suite executes every notebook (tests/test_notebooks.py), so they cannot rot. Each runs in well under a
minute on 2 CPU cores, on the embedded models (no network).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nbformat

HERE = Path(__file__).parent

PATCHING = [
    "# Activation patching walkthrough\n\nOn the embedded 2-layer attention-only model: cache activations, "
    "edit them with hooks, find where an induction prompt's answer lives with batched activation patching, "
    "and compare with gradient-based attribution patching.",
    "import torch\nimport lens\nfrom lens import patching, attribution\n\nmodel = lens.zoo.load('attn-only-2l')\nmodel",
    "## run_with_cache\nEvery activation has a TransformerLens name; `cache[name, layer]` is shorthand.",
    "logits, cache = model.run_with_cache('def __init__(self, name):\\n        self.name = name')\n"
    "print(len(cache), 'activations cached')\n"
    "print(cache['pattern', 1].shape, cache['blocks.0.hook_resid_post'].shape)",
    "## Hooks\nA hook receives `(activation, hook)` and may return a replacement. Ablating every head of "
    "layer 1 hurts the loss on repeated text far more than on the first occurrence.",
    "printable = list(range(32, 127))  # the bytes the model saw in training\n"
    "tokens = lens.head_detectors.repeated_tokens(model, seq_len=40, batch=4, seed=0, token_ids=printable)\n\n"
    "def zero_heads(z, hook):\n    return torch.zeros_like(z)\n\n"
    "with torch.no_grad():\n"
    "    clean = model(tokens, return_type='loss', loss_per_token=True)\n"
    "    ablated = model.run_with_hooks(tokens, return_type='loss', loss_per_token=True,\n"
    "                                   fwd_hooks=[('blocks.1.attn.hook_z', zero_heads)])\n"
    "print(f'second repeat loss: {clean[:, 41:].mean():.2f} -> {ablated[:, 41:].mean():.2f} with layer 1 ablated')\n"
    "assert ablated[:, 41:].mean() > clean[:, 41:].mean()",
    "## A prompt pair\nClean: a random letter sequence, then its first 12 letters again (the 13th is predictable "
    "by induction). Corrupted: a different first sequence, same second part.",
    "from lens.demo import induction_prompt_pair\n\n"
    "clean_tokens, corrupted_tokens, answer = induction_prompt_pair(model, seed=0)\n"
    "print(repr(model.to_string(clean_tokens[0])), '->', repr(chr(answer)))\n"
    "print(repr(model.to_string(corrupted_tokens[0])))\n"
    "clean_logits, clean_cache = model.run_with_cache(clean_tokens)\n"
    "corrupted_logits = model(corrupted_tokens)\n"
    "clean_value, corrupted_value = clean_logits[0, -1, answer].item(), corrupted_logits[0, -1, answer].item()\n\n"
    "def recovered(logits):  # one value per batch row: 1 = clean behaviour, 0 = corrupted\n"
    "    return (logits[:, -1, answer] - corrupted_value) / (clean_value - corrupted_value)\n\n"
    "print(f'answer logit: clean {clean_value:.2f}, corrupted {corrupted_value:.2f}')",
    "## Batched activation patching\nEvery (layer, position) site of the residual stream, many sites per "
    "forward. Patching all sites of a layer's input with the clean run restores the clean metric exactly.",
    "resid = patching.get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, recovered, labelled=True)\n"
    "print(resid)\n"
    "resid.figure(title='resid_pre patching: fraction of the answer logit recovered')",
    "heads = patching.get_act_patch_attn_head_out_all_pos(model, corrupted_tokens, clean_cache, recovered,\n"
    "                                                      labelled=True)\n"
    "heads.figure(title='Head output patching (all positions)')",
    "## Attribution patching\nOne clean forward, one corrupted forward and backward: a linear (gradient) estimate "
    "for every site at once. It is reliable where the metric is close to linear in the activation, and poor for "
    "large, nonlinear changes such as swapping which earlier token an induction head attends to; always compare "
    "with real patching on the sites that matter, as below.",
    "attr = attribution.get_attr_patch_resid_pre(model, corrupted_tokens, clean_cache, recovered, labelled=True)\n"
    "real, est = resid.values.flatten(), attr.values.flatten()\n"
    "corr = torch.corrcoef(torch.stack([real, est]))[0, 1].item()\n"
    "print(f'Pearson correlation of attribution vs activation patching: {corr:.3f}')\n"
    "attr.figure(title='Attribution patching estimate (resid_pre)')",
]

INDUCTION = [
    "# Induction heads on the embedded model\n\nReproduces the signature of induction heads (Olsson et al. 2022) "
    "on `attn-only-2l`, trained by this repo on the Python standard library's source (see docs/zoo.md): in-context "
    "learning on repeated random text, head detectors, attention patterns, ablation, and the OV circuit. The same "
    "cells work on any lens model.",
    "import torch\nimport lens\nfrom lens import head_detectors, plot\n\nmodel = lens.zoo.load('attn-only-2l')\n"
    "report = lens.zoo.info('attn-only-2l')\n"
    "print('held-out loss', report['held_out_loss'], 'nats/byte')",
    "## In-context learning\nOn a random sequence repeated twice, a model with induction heads predicts the "
    "second copy far better than the first.",
    "printable = list(range(32, 127))  # the bytes the model saw in training\n"
    "tokens = head_detectors.repeated_tokens(model, seq_len=50, batch=8, seed=0, token_ids=printable)\n"
    "with torch.no_grad():\n    per_token = model(tokens, return_type='loss', loss_per_token=True)\n"
    "first, second = per_token[:, 1:50].mean().item(), per_token[:, 51:].mean().item()\n"
    "print(f'first repeat {first:.2f}, second repeat {second:.2f} nats/token')\n"
    "assert second < 0.5 * first\n"
    "plot.line(per_token.mean(0), title='Loss by position', x_title='Position', y_title='nats')",
    "## Head detectors\nPrevious-token, duplicate-token and induction scores for every head, from one forward.",
    "_, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith('hook_pattern'))\n"
    "scores = head_detectors.detect_heads(model, tokens, cache=cache)\n"
    "for kind, s in scores.items():\n    print(kind, s.round(decimals=2).tolist())\n"
    "layer, head = divmod(int(scores['induction'].argmax()), model.cfg.n_heads)\n"
    "print(f'highest induction score: L{layer}H{head} = {scores[\"induction\"][layer, head]:.3f}')\n"
    "plot.imshow(scores['induction'], title='Induction score', x_title='Head', y_title='Layer', zmid=None)",
    "plot.attention_patterns(cache['pattern', layer][0, :, :40, :40], model.to_str_tokens(tokens[0, :40]),\n"
    "                        heads=[head], title=f'L{layer}H{head} (first 40 positions)')",
    "## Ablating a head\nZero-ablate the highest-scoring head and compare the loss on the second repeat.",
    "def ablate(z, hook):\n    z[:, :, head] = 0\n    return z\n\n"
    "with torch.no_grad():\n"
    "    ablated = model.run_with_hooks(tokens, return_type='loss', loss_per_token=True,\n"
    "                                   fwd_hooks=[(f'blocks.{layer}.attn.hook_z', ablate)])\n"
    "print(f'second repeat: {second:.2f} -> {ablated[:, 51:].mean():.2f} with L{layer}H{head} ablated')",
    "## The circuit in the weights\nAn induction head's OV circuit copies: its full OV circuit `W_E W_OV W_U` "
    "maps each token to itself. Measure how often that holds for this head.",
    "ov = model.OV[layer, head]                      # FactoredMatrix [d_model, d_model]\n"
    "full = (model.W_E @ ov @ model.W_U).AB           # [d_vocab, d_vocab]\n"
    "letters = torch.tensor(list(b'abcdefghijklmnopqrstuvwxyz'))\n"
    "sub = full[letters][:, letters]\n"
    "top1 = (sub.argmax(-1) == torch.arange(26)).float().mean().item()\n"
    "print(f'for {top1:.0%} of letters the OV circuit maps the letter to itself (top-1); chance is 4%')",
]

GENERATION = [
    "# Generation: samplers, KV cache, hooks and context limits",
    "import torch\nimport lens\n\nmodel = lens.zoo.load('gelu-4l')\nmodel",
    "## Greedy and sampled text\nSampler order and meaning follow Hugging Face (repetition penalty, temperature, "
    "top-k, top-p, min-p); a seed makes sampling reproducible.",
    "print(model.generate('import os\\nimport ', max_new_tokens=40))\n"
    "a = model.generate('def ', max_new_tokens=40, do_sample=True, temperature=0.8, top_p=0.9, seed=1)\n"
    "b = model.generate('def ', max_new_tokens=40, do_sample=True, temperature=0.8, top_p=0.9, seed=1)\n"
    "assert a == b\nprint(a)",
    "## The KV cache gives the same logits\n`output_logprobs=True` returns the log-probability of every "
    "generated token; with and without the cache they agree.",
    "cached = model.generate('class ', max_new_tokens=20, output_logprobs=True)\n"
    "uncached = model.generate('class ', max_new_tokens=20, output_logprobs=True, use_past_kv_cache=False)\n"
    "print(cached.output)\n"
    "print('max |logprob difference|:', (cached.logprobs - uncached.logprobs).abs().max().item())",
    "## Batches with left padding\nEach row of a batch equals the row run alone.",
    "prompts = ['for i in ', 'while ']\n"
    "batch = model.generate(prompts, max_new_tokens=16)\n"
    "alone = [model.generate(p, max_new_tokens=16) for p in prompts]\n"
    "print(batch)\nassert batch == alone",
    "## Hooks during generation\nHooks set with `model.hooks(...)` fire on every step: the prompt pass with "
    "the whole prompt, then `pos = 1` per decode step.",
    "shapes = []\n"
    "with model.hooks(fwd_hooks=[('hook_embed', lambda x, hook: shapes.append(tuple(x.shape)))]):\n"
    "    model.generate('x = ', max_new_tokens=4)\n"
    "print(shapes)",
    "out = model.generate('x = ', max_new_tokens=6, return_cache=True, names_filter='blocks.0.hook_resid_post')\n"
    "print(out.output, out.cache['resid_post', 0].shape)",
    "## Context limits\nA request that cannot fit fails before any compute, with the numbers.",
    "try:\n    model.generate('a' * 200, max_new_tokens=100)\nexcept ValueError as e:\n    print(e)",
    "## Long-context models and `context_size_override`\nA model trained on more than 4096 positions loads with "
    "a 4096 context; `context_size_override` raises it up to the trained maximum. (A tiny random Mistral saved to "
    "disk stands in for a real checkpoint.)",
    "import tempfile, transformers\n"
    "cfg = transformers.MistralConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=4, "
    "num_key_value_heads=2,\n"
    "                                 intermediate_size=64, vocab_size=64, max_position_embeddings=32768, "
    "sliding_window=4096)\n"
    "path = tempfile.mkdtemp()\ntransformers.MistralForCausalLM(cfg).save_pretrained(path)\n"
    "print(lens.HookedTransformer.from_pretrained(path).cfg.n_ctx)\n"
    "print(lens.HookedTransformer.from_pretrained(path, context_size_override=16384).cfg.n_ctx)\n"
    "try:\n    lens.HookedTransformer.from_pretrained(path, context_size_override=65536)\n"
    "except ValueError as e:\n    print(e)",
]

NOTEBOOKS = {
    "01_activation_patching.ipynb": PATCHING,
    "02_induction_heads.ipynb": INDUCTION,
    "03_generation.ipynb": GENERATION,
}


def build(name: str, cells: list[str]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for src in cells:  # markdown cells start with a heading; code cells never start with "#"
        is_md = src.startswith("#")
        nb.cells.append(nbformat.v4.new_markdown_cell(src) if is_md else nbformat.v4.new_code_cell(src))
    return nb


def execute(nb: nbformat.NotebookNode, cwd: Path, timeout: int = 600) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-run", action="store_true", help="write the notebooks without executing them")
    parser.add_argument("names", nargs="*", default=list(NOTEBOOKS))
    args = parser.parse_args()
    for name in args.names:
        nb = build(name, NOTEBOOKS[name])
        if not args.no_run:
            nb = execute(nb, HERE)
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
