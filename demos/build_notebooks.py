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
    "## Token trace\n`output_trace=True` returns, for each generated position, the chosen token and its "
    "probability, and the `trace_top_k` most likely tokens with their probabilities before and after the "
    "sampler's filters (0 where a filter removed the token). `lens.plot.generation_trace` draws one row as a "
    "token-by-step heatmap: the chosen token on top, the alternatives by rank below.",
    "from lens import plot\n\n"
    "out = model.generate('def ', max_new_tokens=16, do_sample=True, temperature=0.8, top_k=5, seed=1,\n"
    "                     output_trace=True, trace_top_k=8)\n"
    "trace = out.trace\n"
    "print(repr(out.output), tuple(trace.top_ids.shape))  # [batch, step, k]\n"
    "step = 2\n"
    "for i, before, after in zip(trace.top_ids[0, step].tolist(), trace.top_probs_raw[0, step].tolist(),\n"
    "                            trace.top_probs[0, step].tolist()):\n"
    "    print(f'{model.tokenizer.decode([i])!r:>8}  before the filters {before:.3f}  after {after:.3f}')\n"
    "assert (trace.top_probs[..., 5:] == 0).all()  # top-k 5 removed every token past rank 5\n"
    "plot.generation_trace(trace, model, title='sampled with top_k=5: probabilities after the filters')",
    "## Speculative decoding and the trace\n`prompt_lookup_num_tokens` proposes the tokens that followed an "
    "earlier occurrence of the last n-gram; the model verifies them several at a time. Greedy output is plain "
    "greedy decoding's, in fewer forwards (`return_stats=True`); the trace marks each proposal as accepted "
    "(circle) or rejected (cross).",
    "prompt = 'import os\\nimport sys\\nimport os\\nimport '\n"
    "plain = model.generate(prompt, max_new_tokens=30, return_stats=True, output_trace=True)\n"
    "spec = model.generate(prompt, max_new_tokens=30, prompt_lookup_num_tokens=5, return_stats=True, "
    "output_trace=True)\n"
    "assert spec.output == plain.output and torch.equal(spec.trace.tokens, plain.trace.tokens)\n"
    "print(repr(spec.output))\n"
    "print(spec.stats)\n"
    "accepted = spec.trace.accepted[0]\n"
    "assert (spec.trace.proposed[0, accepted] == spec.trace.tokens[0, accepted]).all()\n"
    "print(f'{int(accepted.sum())} output tokens were accepted proposals; '\n"
    "      f'{spec.stats.forwards} forwards instead of {plain.stats.forwards}')\n"
    "plot.generation_trace(spec.trace, model, title='prompt lookup: proposals accepted and rejected')",
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

SAE_FEATURES = [
    "# Sparse autoencoder features\n\nOn the embedded `gelu-4l` model and its embedded TopK SAE "
    "(`lens.zoo.load_sae`): attach the SAE, find a feature, read its top-activating contexts and logit effects, "
    "then ablate it and steer with it and measure what each does.",
    "import tempfile\nfrom pathlib import Path\n\nimport torch\nimport lens\nfrom lens.sae import features as F\n"
    "from lens.sae.browser import feature_browser\nfrom lens.zoo.train_sae import held_out_contexts\n\n"
    "model = lens.zoo.load('gelu-4l')\nsae = lens.zoo.load_sae('gelu-4l-resid1-topk16')\n"
    "report = lens.zoo.sae_info('gelu-4l-resid1-topk16')['eval']['metrics']\n"
    "print(sae.hook_name, sae.d_in, '->', sae.d_sae, 'latents, k =', sae.cfg.k)\n"
    "print({m: round(report[m], 3) for m in ('explained_variance', 'l0', 'ce_loss_score')})",
    "## Attach it\nWith `use_error_term=True` the model computes what it computed before (the SAE's error is added "
    "back), and every feature activation is in the cache under `{hook}.hook_sae_acts_post`.",
    "prompt = 'class Point:\\n    def __init__(self, x, y):\\n        self.x = x\\n        self.y = y\\n\\n'\n"
    "prompt += '    def norm(self):'\n"
    "tokens = model.to_tokens(prompt)\n"
    "with torch.no_grad():\n    plain = model(tokens)\n"
    "    with model.saes([sae], use_error_term=True):\n"
    "        spliced, cache = model.run_with_cache(tokens)\n"
    "acts = cache[f'{sae.hook_name}.hook_sae_acts_post'][0]\n"
    "print('max |logit difference| with the error term:', (spliced - plain).abs().max().item())\n"
    "print('active features per token:', (acts > 0).sum(-1).float().mean().item())\n"
    "assert torch.allclose(spliced, plain, atol=1e-4)",
    "## Find a feature\nThe feature most active on the `:` that ends the last `def` line, where the model must "
    "predict a newline.",
    "pos = tokens.shape[1] - 1\nprint(repr(model.to_string(tokens[0, pos - 10 : pos + 1])))\n"
    "feature = int(acts[pos].argmax())\n"
    "print(f'feature {feature}: activation {acts[pos, feature]:.2f}; the 5 strongest here:',\n"
    "      acts[pos].topk(5).indices.tolist())",
    "## Its top-activating contexts\n`top_activations` streams held-out text through the model and keeps a running "
    "top-k per feature (memory bounded by features x k, not by the corpus). The density comes from the same pass.",
    "held_out = held_out_contexts(192)\n"
    "top = F.top_activations(model, sae, held_out, k=12, context_window=(12, 2), batch_size=16)\n"
    "print(f'feature {feature} fires on {top.density[feature]:.2%} of {top.total_tokens} held-out tokens')\n"
    "before = top.context_window[0]  # the hit is at this index of each window; shown in [brackets]\n"
    "for ex in top.examples(feature)[:8]:\n"
    "    s = [F.visible(F.token_strings(model, [t])[0]) if t >= 0 else '' for t in ex['tokens']]\n"
    "    print(f\"{ex['value']:6.2f}  {''.join(s[:before])}[{s[before]}]{''.join(s[before + 1:])}\")",
    "F.density_histogram(top)",
    "## Logit effects\nThe decoder direction read straight through the unembedding (`W_dec[f] @ W_U`): the tokens "
    "this feature pushes up and down.",
    "effects = F.logit_effects(model, sae, feature, k=8)\n"
    "print('promotes:', [F.visible(s) for s in effects.top_strings])\n"
    "print('suppresses:', [F.visible(s) for s in effects.bottom_strings])\n"
    "promoted = int(effects.top_tokens[0])\n"
    "F.logit_effects_figure(effects)",
    "## Ablate it\nZero the feature wherever it fires (the error term stays, so nothing else changes) and measure "
    "the log-probability of its most promoted token at those positions.",
    "hook = f'{sae.hook_name}.hook_sae_acts_post'\n\n"
    "def ablate(acts, hook):\n    acts[..., feature] = 0.0\n    return acts\n\n"
    "with torch.no_grad(), model.saes([sae], use_error_term=True):\n"
    "    _, c = model.run_with_cache(held_out[:64], names_filter=[hook])\n"
    "    fires = c[hook][..., feature] > 0\n"
    "    clean = model(held_out[:64]).log_softmax(-1)[..., promoted]\n"
    "    ablated = model.run_with_hooks(held_out[:64], fwd_hooks=[(hook, ablate)]).log_softmax(-1)[..., promoted]\n"
    "drop = (clean - ablated)[fires]\n"
    "print(f'{int(fires.sum())} positions; log p({F.visible(effects.top_strings[0])!r}) falls by '\n"
    "      f'{drop.mean():.3f} nats on average ({(drop > 0).float().mean():.0%} of them fall)')\n"
    "untouched = (clean - ablated)[~fires].abs().max()\n"
    "print(f'largest change where the feature is silent: {untouched:.2e} (later positions can still move)')\n"
    "assert drop.mean() > 0",
    "## Steer with it\nAdd the feature at every generated position (a hook on `hook_sae_acts_post` also acts inside "
    "`generate`) and compare the continuation and the promoted token's probability.",
    "steer_prompt = 'import os\\nimport sys\\n\\ndef main('\n"
    "def steer(acts, hook):\n    acts[..., feature] += 4 * float(top.max_activation[feature])\n    return acts\n\n"
    "with torch.no_grad(), model.saes([sae], use_error_term=True):\n"
    "    before = model.generate(steer_prompt, max_new_tokens=40)\n"
    "    p_before = model(steer_prompt).softmax(-1)[0, -1, promoted].item()\n"
    "    with model.hooks(fwd_hooks=[(hook, steer)]):\n"
    "        after = model.generate(steer_prompt, max_new_tokens=40)\n"
    "        p_after = model(steer_prompt).softmax(-1)[0, -1, promoted].item()\n"
    "print('plain:  ', repr(before[len(steer_prompt):]))\nprint('steered:', repr(after[len(steer_prompt):]))\n"
    "print(f'p({F.visible(effects.top_strings[0])!r}) next: {p_before:.3f} -> {p_after:.3f}')\n"
    "assert p_after > p_before",
    "## The feature browser\nOne standalone HTML file per SAE (plotly embedded, works offline): a searchable list of "
    "features, each with its contexts, logit effects and activation histogram.",
    "out = Path(tempfile.mkdtemp()) / 'gelu-4l-resid1-topk16.html'\n"
    "strongest = top.max_activation.topk(64).indices.tolist()\n"
    "browse = F.top_activations(model, sae, held_out, features=sorted(set(strongest) | {feature}), k=12)\n"
    "feature_browser(model, sae, None, out, result=browse)\n"
    "print(out.name, f'{out.stat().st_size / 1e6:.2f} MB')",
]

NOTEBOOKS = {
    "01_activation_patching.ipynb": PATCHING,
    "02_induction_heads.ipynb": INDUCTION,
    "03_generation.ipynb": GENERATION,
    "04_sae_features.ipynb": SAE_FEATURES,
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
