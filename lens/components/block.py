"""One residual block: ``resid_pre -> ln1 -> attn -> (+) -> resid_mid -> ln2 -> mlp -> (+) -> resid_post``.

Hooks: ``hook_resid_pre``, ``hook_attn_out``, ``hook_resid_mid`` (sequential blocks with an MLP),
``hook_mlp_out``, ``hook_resid_post``, all ``[batch, pos, d_model]``; behind config flags as in
TransformerLens: ``hook_attn_in`` ``[batch, pos, head, d_model]`` (use_attn_in),
``hook_q_input``/``hook_k_input``/``hook_v_input`` (use_split_qkv_input; k/v have n_key_value_heads),
``hook_mlp_in`` (use_hook_mlp_in); :meth:`TransformerBlock.sync_hooks` creates and removes these when a
flag changes after construction. With ``parallel_attn_mlp`` (GPT-NeoX) attention and MLP both read
``resid_pre`` and there is no ``resid_mid``. With ``use_normalization_before_and_after`` (Gemma 2/3)
``ln1_post`` / ``ln2_post`` normalise the attention / MLP output before ``hook_attn_out`` / ``hook_mlp_out``;
with ``use_normalization_after_only`` (OLMo-2) they are the only norms: no ``ln1`` / ``ln2``, attention and MLP
read the residual stream itself.

Under grouped-query attention with per-head inputs, key/value head ``g`` reads the input of query
head ``g * n_heads // n_key_value_heads`` (the first head of its group); with
``ungroup_grouped_query_attention`` there are ``n_heads`` key/value inputs, one per query head.
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor, nn

from lens.components.attention import Attention
from lens.components.hook_flags import stale_flag_error
from lens.components.masking import AttentionContext
from lens.components.mlp import MLP
from lens.components.moe import MoE
from lens.components.norm import make_norm
from lens.config import TransformerConfig
from lens.hooks import HookPoint


class TransformerBlock(nn.Module):
    def __init__(self, cfg: TransformerConfig, layer_idx: int):
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        self.has_mlp = not cfg.attn_only
        post_only = cfg.use_normalization_after_only  # OLMo-2: no pre-sublayer norms
        post = cfg.use_normalization_before_and_after or post_only
        self.ln1 = None if post_only else make_norm(cfg)
        self.attn = Attention(cfg, layer_idx)
        self.ln1_post = make_norm(cfg) if post else None
        if self.has_mlp:
            self.ln2 = None if post_only else make_norm(cfg)
            self.mlp = MoE(cfg) if cfg.num_experts is not None else MLP(cfg)
            self.ln2_post = make_norm(cfg) if post else None
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        if self.has_mlp:
            if not cfg.parallel_attn_mlp:
                self.hook_resid_mid = HookPoint()
            self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()
        self.sync_hooks()

    def sync_hooks(self) -> None:
        """Create or remove the optional hook points the config flags ask for (here and in ``attn``).

        ``use_attn_in`` -> ``hook_attn_in``; ``use_split_qkv_input`` -> ``hook_q/k/v_input``;
        ``use_hook_mlp_in`` (with an MLP) -> ``hook_mlp_in``; ``use_attn_result`` -> ``attn.hook_result``.
        Called at construction and by the model's ``set_use_*`` methods (which then re-run ``setup()``).
        """
        cfg = self.cfg
        wanted = {
            "hook_attn_in": cfg.use_attn_in,
            "hook_q_input": cfg.use_split_qkv_input,
            "hook_k_input": cfg.use_split_qkv_input,
            "hook_v_input": cfg.use_split_qkv_input,
            "hook_mlp_in": cfg.use_hook_mlp_in and self.has_mlp,
        }
        for name, on in wanted.items():
            if on and name not in self._modules:
                setattr(self, name, HookPoint())
            elif not on and name in self._modules:
                delattr(self, name)
        self.attn.sync_hooks()

    def _ln1(self, x: Tensor) -> Tensor:
        return x if self.ln1 is None else self.ln1(x)

    def _ln2(self, x: Tensor) -> Tensor:
        return x if self.ln2 is None else self.ln2(x)

    def _attn_out(self, resid_pre: Tensor, ctx: AttentionContext) -> Tensor:
        out = self._attention(resid_pre, ctx)
        return out if self.ln1_post is None else self.ln1_post(out)

    def _mlp_out(self, mlp_in: Tensor) -> Tensor:
        out = self.mlp(self._ln2(mlp_in))
        return out if self.ln2_post is None else self.ln2_post(out)

    def _attention(self, resid_pre: Tensor, ctx: AttentionContext) -> Tensor:
        cfg = self.cfg
        if not (cfg.use_split_qkv_input or cfg.use_attn_in):
            return self.attn(self._ln1(resid_pre), None, None, ctx)
        h, kv = cfg.n_heads, cfg.n_key_value_heads
        if cfg.ungroup_grouped_query_attention:  # one key/value input per query head (TransformerLens)
            kv = h
        if cfg.use_split_qkv_input:
            if "hook_q_input" not in self._modules:
                raise stale_flag_error("use_split_qkv_input")
            per_head = resid_pre.unsqueeze(2)
            q_in = self.hook_q_input(per_head.expand(-1, -1, h, -1).clone())
            k_in = self.hook_k_input(per_head.expand(-1, -1, kv, -1).clone())
            v_in = self.hook_v_input(per_head.expand(-1, -1, kv, -1).clone())
            return self.attn(self._ln1(q_in), self._ln1(k_in), self._ln1(v_in), ctx)
        if "hook_attn_in" not in self._modules:
            raise stale_flag_error("use_attn_in")
        attn_in = self.hook_attn_in(resid_pre.unsqueeze(2).expand(-1, -1, h, -1).clone())  # use_attn_in
        x = self._ln1(attn_in)
        kv_in = x[:, :, :: h // kv]
        return self.attn(x, kv_in, kv_in, ctx)

    def forward(
        self, resid_pre: Float[Tensor, "batch pos d_model"], ctx: AttentionContext
    ) -> Float[Tensor, "batch pos d_model"]:
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self._attn_out(resid_pre, ctx))
        if not self.has_mlp:
            return self.hook_resid_post(resid_pre + attn_out)
        if self.cfg.parallel_attn_mlp:
            mlp_in = self.hook_mlp_in(resid_pre.clone()) if self.cfg.use_hook_mlp_in else resid_pre
            mlp_out = self.hook_mlp_out(self._mlp_out(mlp_in))
            return self.hook_resid_post(resid_pre + attn_out + mlp_out)
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_in = self.hook_mlp_in(resid_mid.clone()) if self.cfg.use_hook_mlp_in else resid_mid
        mlp_out = self.hook_mlp_out(self._mlp_out(mlp_in))
        return self.hook_resid_post(resid_mid + mlp_out)
