"""Dataset-scale activations: harvest hook activations over a token corpus into a sharded on-disk store.

``run_with_cache`` keeps one batch in memory; SAE and probe training, feature statistics and dataset-wide
patching need millions of tokens. :func:`harvest` writes them to safetensors shards (resumable, written
atomically from a writer thread, split across ``torchrun`` ranks), :func:`open` reads them back memory-mapped,
and ``python -m lens.store harvest|info|verify`` does both from the shell. Formats, resuming and multi-node
runs: docs/activation-store.md.

>>> import lens, lens.store
>>> model = lens.zoo.load("gelu-4l")
>>> lens.store.harvest(model, ["def f(x):\\n    return x\\n"] * 200, hooks=["blocks.1.hook_resid_post"],
...                    context_size=64, batch_size=8, out_dir="acts", progress=False)   # doctest: +SKIP
>>> store = lens.store.open("acts")                                                      # doctest: +SKIP
>>> store["blocks.1.hook_resid_post"][:10].shape                                         # doctest: +SKIP
torch.Size([10, 512])
"""

from lens.store.harvest import harvest
from lens.store.reader import Column, Store, StoreStream, open
from lens.store.shards import StoreError
from lens.store.sources import TokenSource
from lens.store.verify import info, verify

__all__ = ["Column", "Store", "StoreError", "StoreStream", "TokenSource", "harvest", "info", "open", "verify"]
