"""The visual abstractor of mPLUG-Owl: learned queries summarize the visual tokens into a few LLM tokens.

Each layer (official code, ``MplugOwlVisualAbstractorLayer``):
    q = LN1(queries);  v = LNk(visual)
    attn over keys/values = concat[q, v]        # one softmax over all queries and all visual tokens
    x = q + out_proj(attn)                       # the residual is the *normed* queries
    x = x + W2(LN(SiLU(W1 LN2(x)) * W3 LN2(x)))  # SwiGLU with a LayerNorm on the inner activation
No positional embeddings. After the last layer: ``visual_fc`` to the LLM width, then ``vit_eos`` is appended.

Numerics as the official code: LN1, LNk and LN2 are built without an eps (PyTorch's 1e-5); only the MLP's inner
LayerNorm uses the config's ``layer_norm_eps`` (1e-6). The queries start at zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from owl_pipeline.config import AbstractorConfig


class AbstractorAttention(nn.Module):
    """Multi-head attention of queries over concat[queries, visual tokens], fused through SDPA."""

    def __init__(self, cfg: AbstractorConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.dropout = cfg.attention_dropout
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n, q_len, dim = queries.shape
        heads = lambda x: x.view(n, -1, self.num_heads, dim // self.num_heads).transpose(1, 2)  # noqa: E731
        q = heads(self.query(queries))  # (N, H, Q, d)
        k = heads(self.key(context))  # (N, H, Q + V, d)
        v = heads(self.value(context))
        dropout = self.dropout if self.training else 0.0  # dropout on attention probabilities
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # (N, H, Q, d)
        return out.transpose(1, 2).reshape(n, q_len, dim)


class AbstractorMLP(nn.Module):
    """SwiGLU with a LayerNorm on the inner activation: W2(LN(SiLU(W1 x) * W3 x))."""

    def __init__(self, cfg: AbstractorConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.w3 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.ffn_ln = nn.LayerNorm(cfg.intermediate_size, eps=cfg.layer_norm_eps)
        self.w2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.ffn_ln(F.silu(self.w1(x)) * self.w3(x)))


class AbstractorLayer(nn.Module):
    def __init__(self, cfg: AbstractorConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size)  # eps 1e-5, as the official code (only ffn_ln uses the config's)
        self.normk = nn.LayerNorm(cfg.hidden_size)
        self.attention = AbstractorAttention(cfg)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.norm2 = nn.LayerNorm(cfg.hidden_size)
        self.mlp = AbstractorMLP(cfg)

    def forward(self, queries: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        q = self.norm1(queries)  # (N, Q, D)
        context = torch.cat([q, self.normk(visual)], dim=1)  # (N, Q + V, D)
        x = q + self.out_proj(self.attention(q, context))
        return x + self.mlp(self.norm2(x))


class VisualAbstractor(nn.Module):
    """Visual tokens (N, V, D_vis) -> LLM tokens (N, num_queries + 1, D_llm)."""

    def __init__(self, cfg: AbstractorConfig, llm_hidden_size: int):
        super().__init__()
        self.query_embeds = nn.Parameter(torch.zeros(1, cfg.num_queries, cfg.hidden_size))  # official: zeros
        self.layers = nn.ModuleList(AbstractorLayer(cfg) for _ in range(cfg.num_layers))
        self.visual_fc = nn.Linear(cfg.hidden_size, llm_hidden_size)
        self.vit_eos = nn.Parameter(torch.randn(1, 1, llm_hidden_size) * 0.02)

    @property
    def num_output_tokens(self) -> int:
        return self.query_embeds.shape[1] + 1

    def forward(self, visual: torch.Tensor) -> torch.Tensor:
        x = self.query_embeds.expand(visual.shape[0], -1, -1)  # (N, Q, D)
        for layer in self.layers:
            x = layer(x, visual)
        x = self.visual_fc(x)  # (N, Q, D_llm)
        eos = self.vit_eos.expand(x.shape[0], -1, -1)  # (N, 1, D_llm)
        return torch.cat([x, eos], dim=1)  # (N, Q + 1, D_llm)
