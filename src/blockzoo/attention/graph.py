"""Graph attention: attention restricted to the edges of a graph.

Papers: Graph Attention Networks (Velickovic, arXiv 1710.10903, 2018) — GAT
scoring; Attention Is All You Need (Vaswani, arXiv 1706.03762, 2017) — the
scaled dot-product scoring, here applied on edges only (as in graph
transformers, e.g. Dwivedi & Bresson, arXiv 2012.09699, 2020).

Letters: B batch, N nodes, C node feature width (= dim), h heads, d head dim,
E edges.

The graph is shared by the batch, given either as
- a dense boolean adjacency (N, N): ``adj[i, j]`` True when node i receives a message
  from node j; or
- an integer ``edge_index`` (2, E): row 0 the source j, row 1 the target i of each
  edge (the PyTorch Geometric convention), computed with scatter operations in
  O(E) memory.
Both give the same result (tested). ``add_self_loops`` adds i -> i for every node
(existing self-loops are not counted twice). A node without incoming edges receives
no message: its aggregated value is 0 (then the bias / output projection), never NaN.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import ShapeError, check_shape, require_divides
from blockzoo.registry import Example, graph, register

__all__ = ["GraphAttention", "GraphDotProductAttention", "edge_softmax_aggregate"]


def _graph_input(
    g: torch.Tensor, n: int, self_loops: bool, name: str
) -> tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor] | None]:
    """Return (dense mask (N, N), None) or (None, (src, tgt)) from an adjacency or edge_index."""
    if not isinstance(g, torch.Tensor):
        raise ShapeError(f"{name}: expected adjacency (N, N) or edge_index (2, E), got {type(g).__name__}")
    if g.is_floating_point() or g.dtype == torch.bool:
        check_shape(g, "N M", name=name, arg="adjacency", N=n, M=n)
        mask = g.bool() if g.dtype == torch.bool else g != 0
        if self_loops:
            mask = mask | torch.eye(n, dtype=torch.bool, device=g.device)
        return mask, None
    check_shape(g, "two E", name=name, arg="edge_index", two=2)
    if g.numel() and (int(g.min()) < 0 or int(g.max()) >= n):
        raise ShapeError(f"{name}: edge_index holds node ids outside [0, {n}) for N={n} nodes")
    src, tgt = g[0], g[1]
    if self_loops:
        keep = src != tgt
        loop = torch.arange(n, device=g.device)
        src, tgt = torch.cat((src[keep], loop)), torch.cat((tgt[keep], loop))
    return None, (src, tgt)


def edge_softmax_aggregate(
    scores: torch.Tensor, values: torch.Tensor, src: torch.Tensor, tgt: torch.Tensor,
    *, dropout_p: float = 0.0, training: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Softmax of edge scores over each target's incoming edges, then sum of source values.

    Equation, for target i with incoming edges (j -> i)::

        alpha_ij = exp(s_ij) / sum_{j'} exp(s_ij')
        out_i    = sum_j alpha_ij v_j        (0 when i has no incoming edge)

    Args:
        scores: (B, h, E) one score per edge; values: (B, h, N, d); src, tgt: (E,).

    Returns:
        out (B, h, N, d) and alpha (B, h, E).
    """
    b, h, n, _ = values.shape
    idx = tgt.expand(b, h, -1)  # (B, h, E)
    init = torch.full((b, h, n), float("-inf"), dtype=scores.dtype, device=scores.device)
    top = init.scatter_reduce(-1, idx, scores, reduce="amax", include_self=True).detach()  # (B, h, N)
    ex = (scores - top[..., tgt]).exp()  # (B, h, E); the shift cancels in the ratio
    den = torch.zeros_like(init).index_add(-1, tgt, ex)  # (B, h, N)
    alpha = ex / den[..., tgt]  # (B, h, E)
    a = F.dropout(alpha, dropout_p, training) if dropout_p > 0 else alpha
    msg = a[..., None] * values[:, :, src]  # (B, h, E, d)
    out = torch.zeros_like(values).index_add(2, tgt, msg)  # (B, h, N, d)
    return out, alpha


def _dense_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over allowed keys; rows with no allowed key give all-zero weights (no NaN)."""
    has = mask.any(-1, keepdim=True)  # (N, 1)
    w = logits.masked_fill(~(mask | ~has), float("-inf")).softmax(-1)  # (B, h, N, N)
    return w * has


@register(
    name="graph_attention",
    family="attention",
    paper="Graph Attention Networks",
    arxiv="1710.10903",
    year=2018,
    input="graph",
    example=Example(config=dict(dim=16, num_heads=4), inputs=graph("dim"), size=(8,),
                    out_shape="same", tiny=dict(dim=8, num_heads=2)),
)
class GraphAttention(nn.Module):
    r"""GAT layer: LeakyReLU-scored attention over each node's neighbours, multi-head.

    Velickovic et al., "Graph Attention Networks", arXiv 1710.10903, eqs. (1)-(6).

    Equation, per head k, for node i with neighbours N(i)::

        z_j      = W^k x_j
        e_ij     = LeakyReLU(a_dst^k . z_i + a_src^k . z_j)       (= a^T [z_i || z_j])
        alpha_ij = softmax_{j in N(i)}(e_ij)
        h_i^k    = sum_{j in N(i)} alpha_ij z_j
        y_i      = Concat_k(h_i^k) + b      (concat=True)   or   mean_k(h_i^k) + b

    Args:
        dim: C, the node feature width.
        num_heads: h (paper: 8 in hidden layers).
        head_dim: d (default dim // h when concatenating, dim when averaging), so the
            default output width is C.
        concat: concatenate the heads (hidden layers) or average them (output layer).
        negative_slope: the LeakyReLU slope (0.2 in the paper).
        dropout: dropout on the attention coefficients (0.6 in the paper).
        add_self_loops: include i in N(i) (the paper does).
        bias: add a learned bias to the output.

    Shape:
        - x: (B, N, C), C = dim; graph: adjacency (N, N) boolean, True at [i, j] when i
          receives from j, or edge_index (2, E) integer, rows (source, target).
        - Output: (B, N, h * d) with concat, else (B, N, d).

    Deviations:
        The paper's nonlinearity (ELU) and the input-feature dropout sit between layers
        in the paper's network; they are left to the caller. A node without neighbours
        (possible only with ``add_self_loops=False``) outputs the bias alone.

    Example:
        >>> gat = GraphAttention(16, num_heads=4)
        >>> adj = torch.rand(10, 10) < 0.3
        >>> gat(torch.randn(2, 10, 16), adj).shape
        torch.Size([2, 10, 16])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        head_dim: int | None = None,
        concat: bool = True,
        negative_slope: float = 0.2,
        dropout: float = 0.0,
        add_self_loops: bool = True,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        if head_dim is None:
            head_dim = require_divides("GraphAttention", "num_heads", num_heads, "dim", dim,
                                       hint="(or give head_dim)") if concat else dim
        self.dim, self.num_heads, self.head_dim, self.concat = dim, num_heads, head_dim, concat
        self.negative_slope, self.dropout, self.add_self_loops = negative_slope, dropout, add_self_loops
        self.dim_out = num_heads * head_dim if concat else head_dim
        fk = dict(device=device, dtype=dtype)
        self.lin = nn.Linear(dim, num_heads * head_dim, bias=False, **fk)
        self.att_src = nn.Parameter(torch.empty(num_heads, head_dim, **fk))
        self.att_dst = nn.Parameter(torch.empty(num_heads, head_dim, **fk))
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.dim_out, **fk))
        else:
            self.register_parameter("bias", None)
        self.attn_map = AttentionMap("weights")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.lin.weight)
        bound = math.sqrt(6.0 / (2 * self.head_dim))
        nn.init.uniform_(self.att_src, -bound, bound)
        nn.init.uniform_(self.att_dst, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, graph: torch.Tensor) -> torch.Tensor:
        b, n, _ = check_shape(x, "B N C", name="GraphAttention", C=self.dim).values()
        mask, edges = _graph_input(graph, n, self.add_self_loops, "GraphAttention")
        h, d = self.num_heads, self.head_dim
        z = self.lin(x).view(b, n, h, d).transpose(1, 2)  # (B, h, N, d)
        s_src = (z * self.att_src[:, None]).sum(-1)  # (B, h, N)
        s_dst = (z * self.att_dst[:, None]).sum(-1)  # (B, h, N)
        p = self.dropout if self.training else 0.0
        if mask is not None:
            # e_ij = LeakyReLU(a_dst . z_i + a_src . z_j)
            e = F.leaky_relu(s_dst[..., :, None] + s_src[..., None, :], self.negative_slope)  # (B, h, N, N)
            alpha = self.attn_map(_dense_softmax(e, mask))
            out = F.dropout(alpha, p, True) @ z if p > 0 else alpha @ z  # (B, h, N, d)
        else:
            src, tgt = edges
            e = F.leaky_relu(s_dst[..., tgt] + s_src[..., src], self.negative_slope)  # (B, h, E)
            out, alpha = edge_softmax_aggregate(e, z, src, tgt, dropout_p=p, training=self.training)
            self.attn_map(alpha)
        out = out.transpose(1, 2).reshape(b, n, h * d) if self.concat else out.mean(1)  # (B, N, C')
        return out + self.bias if self.bias is not None else out

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"concat={self.concat}, add_self_loops={self.add_self_loops}")


@register(
    name="graph_dot_product_attention",
    family="attention",
    paper="Attention Is All You Need",
    arxiv="1706.03762",
    year=2017,
    input="graph",
    example=Example(config=dict(dim=16, num_heads=4), inputs=graph("dim"), size=(8,),
                    out_shape="same", tiny=dict(dim=8, num_heads=2)),
)
class GraphDotProductAttention(nn.Module):
    r"""Multi-head scaled dot-product attention restricted to a graph's edges.

    Vaswani et al., "Attention Is All You Need" (arXiv 1706.03762) scoring, applied on
    edges only as in graph transformers (Dwivedi & Bresson, arXiv 2012.09699).

    Equation, per head, for node i with neighbours N(i)::

        alpha_ij = softmax_{j in N(i)}(q_i . k_j / sqrt(d)),   q, k, v = x W^Q, x W^K, x W^V
        y_i      = Concat_heads(sum_{j in N(i)} alpha_ij v_j) W^O

    A dense adjacency runs ``F.scaled_dot_product_attention`` with the adjacency as a
    boolean mask (explicit softmax while ``attn_map`` is recorded); an ``edge_index``
    runs the scatter softmax of ``edge_softmax_aggregate`` in O(E) memory.

    Args:
        dim: C, the node feature width.
        num_heads: h.
        head_dim: d (default dim // h).
        qkv_bias: biases on the q, k, v projections.
        dropout: dropout on the attention weights.
        add_self_loops: include i in N(i).

    Shape:
        - x: (B, N, C), C = dim; graph: adjacency (N, N) boolean, True at [i, j] when i
          receives from j, or edge_index (2, E) integer, rows (source, target).
        - Output: (B, N, C).

    Deviations:
        A node without neighbours (only with ``add_self_loops=False``) receives a zero
        message, so its output is the output projection's bias.

    Example:
        >>> attn = GraphDotProductAttention(16, num_heads=4)
        >>> edges = torch.tensor([[0, 1, 2], [1, 2, 0]])
        >>> attn(torch.randn(2, 3, 16), edges).shape
        torch.Size([2, 3, 16])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        add_self_loops: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        if head_dim is None:
            head_dim = require_divides("GraphDotProductAttention", "num_heads", num_heads, "dim", dim)
        self.dim, self.num_heads, self.head_dim = dim, num_heads, head_dim
        self.dropout, self.add_self_loops = dropout, add_self_loops
        fk = dict(device=device, dtype=dtype)
        self.qkv = nn.Linear(dim, 3 * num_heads * head_dim, bias=qkv_bias, **fk)
        self.proj = nn.Linear(num_heads * head_dim, dim, **fk)
        self.attn_map = AttentionMap("weights")

    def forward(self, x: torch.Tensor, graph: torch.Tensor) -> torch.Tensor:
        b, n, _ = check_shape(x, "B N C", name="GraphDotProductAttention", C=self.dim).values()
        mask, edges = _graph_input(graph, n, self.add_self_loops, "GraphDotProductAttention")
        h, d = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, d)
        p = self.dropout if self.training else 0.0
        if mask is not None:
            has = mask.any(-1, keepdim=True)  # (N, 1)
            if self.attn_map.active:
                # softmax(q k^T / sqrt(d)) over the neighbours
                alpha = self.attn_map(_dense_softmax((q @ k.transpose(-1, -2)) / math.sqrt(d), mask))
                out = F.dropout(alpha, p, True) @ v if p > 0 else alpha @ v  # (B, h, N, d)
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | ~has, dropout_p=p) * has
        else:
            src, tgt = edges
            scores = (q[:, :, tgt] * k[:, :, src]).sum(-1) / math.sqrt(d)  # (B, h, E)
            out, alpha = edge_softmax_aggregate(scores, v, src, tgt, dropout_p=p, training=self.training)
            self.attn_map(alpha)
        return self.proj(out.transpose(1, 2).reshape(b, n, h * d))  # (B, N, C)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"add_self_loops={self.add_self_loops}")
