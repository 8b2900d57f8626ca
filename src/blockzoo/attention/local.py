"""Local-window (truncated, sliding-window) self-attention in O(N * w) memory.

Papers: Longformer: The Long-Document Transformer (Beltagy, arXiv 2004.05150, 2020)
— sliding-window attention; the same truncated self-attention is used for long
speech sequences, e.g. Transformer-based Acoustic Modeling for Hybrid Speech
Recognition (Wang, arXiv 1910.09799, 2019).

Letters: B batch, N tokens, C model dim (= dim), h heads, d head dim, w window
(one-sided), b block size, nb = ceil(N / b) blocks, K = b + w_left + w_right keys
per block.

Window convention: ``window=w`` means each token attends to the tokens at offsets
-w .. +w (2w + 1 keys including itself). Longformer's "window size" is the whole
width, 2w + 1 here. ``window=(left, right)`` gives an asymmetric window; ``(w, 0)``
is causal.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import call
from blockzoo._memo import memo_table
from blockzoo.attention.dot_product import scaled_dot_product_attention
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require, require_divides
from blockzoo.registry import Example, register, tokens

__all__ = ["LocalAttention", "band_mask", "local_window_attention"]


def band_mask(length: int, left: int, right: int, *, device: Any = None) -> torch.Tensor:
    """Boolean (N, N) mask, True where -left <= j - i <= right (SDPA convention)."""
    i = torch.arange(length, device=device)
    off = i[None, :] - i[:, None]  # (N, N): j - i
    return (off >= -left) & (off <= right)


@memo_table()
def _block_mask(n: int, b: int, left: int, right: int, device: Any) -> torch.Tensor:
    """(nb, b, K) mask of the blocked layout; padded queries may see padded keys."""
    nb = -(-n // b)
    r = torch.arange(b, device=device)[:, None]  # query row in block
    c = torch.arange(b + left + right, device=device)[None, :]  # key column in block
    band = (c - r >= 0) & (c - r <= left + right)  # (b, K)
    start = torch.arange(nb, device=device)[:, None, None] * b
    j = start + c - left  # (nb, 1, K) key position
    i = start + r  # (nb, b, 1) query position
    key_ok = (j >= 0) & (j < n)
    return band & (key_ok | (i >= n))  # (nb, b, K)


@memo_table()
def _block_mask_out(n: int, b: int, left: int, right: int, device: Any) -> torch.Tensor:
    """The keys _block_mask excludes (nb, b, K): what the explicit path fills with -inf."""
    return ~_block_mask(n, b, left, right, device)


def local_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int | tuple[int, int],
    *,
    block_size: int | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    use_sdpa: bool | None = None,
) -> torch.Tensor:
    r"""Softmax attention of each query to the keys within its window, blocked or per query.

    Equation, for query i::

        out_i = sum_{j : -left <= j - i <= right} softmax_j(q_i . k_j * scale) v_j

    Queries are cut into blocks of ``b`` rows; block t attends to the keys
    ``t*b - left .. t*b + b - 1 + right`` (K = b + left + right of them) through one batched
    ``F.scaled_dot_product_attention`` with a (b, K) band mask (on CPU an explicit batched
    softmax, which measured about 2x faster than SDPA's masked CPU path), so memory is
    O(N * (b + left + right)) rather than O(N^2); under ``no_grad`` the blocks run a chunk
    at a time, so the logits never take more than an eighth of q's size (peak memory
    O(N d)). On CPU, where a cost model predicts it faster (short blocks next to the window:
    the blocks' b x K matmuls are mostly call overhead, and K = b + left + right logits a
    query are computed where left + 1 + right are needed), each query is instead scored
    against exactly its own keys, one key offset at a time (W elementwise passes, memory
    O(N W)). Either way it equals full attention with ``band_mask(N, left, right)``.

    Args:
        q, k, v: (B, h, N, d) queries, keys, values of the same length.
        window: w (symmetric, offsets -w..w) or (left, right).
        block_size: b, the query block (default max(left, right, 16)).
        dropout_p: dropout on the attention weights.
        scale: logit scale (default 1 / sqrt(d)).
        use_sdpa: force the SDPA (True) or explicit (False) block computation; default:
            explicit on CPU, SDPA elsewhere. Both give the same result.

    Shape:
        - q, k, v: (B, h, N, d); output (B, h, N, d).
    """
    left, right = (window, window) if isinstance(window, int) else window
    n = q.shape[2]
    b = block_size or max(left, right, 16)
    if not use_sdpa and _per_query_wins(q.shape[0] * q.shape[1], n, left, right, q.shape[3], b, q.device):
        return _per_query(q, k, v, 2, left, right, dropout_p, scale)
    pad = -n % b
    qp = F.pad(q, (0, 0, 0, pad)) if pad else q  # (B, h, nb*b, d)
    kp, vp = (F.pad(t, (0, 0, left, pad + right)) for t in (k, v))  # (B, h, nb*b + left + right, d)
    out = _blocked(qp, kp, vp, n, left, right, b, dropout_p, scale, use_sdpa)  # (B, nb, b, h, d)
    return out.flatten(1, 2)[:, :n].transpose(1, 2)  # (B, h, N, d)


def _per_query(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dim: int, left: int, right: int,
    dropout_p: float, scale: float | None,
) -> torch.Tensor:
    """Each query against its own ``left + 1 + right`` keys, one key offset at a time.

    ``q``, ``k``, ``v`` have their N positions along ``dim``; the other dimensions are
    batch-like and the last is d: (B, h, N, d), or the projection's (B, N, h, d) views.
    Returns ``q``'s shape.

    The logits of offset o are one elementwise product of q with k shifted by o - left (only
    the rows whose key exists; the others are -inf), the (W, ...) stack's softmax runs over
    its leading axis, and the output is W multiply-adds. No tiny matmuls and no wasted keys:
    on short sequences with a small window that is what the blocked method pays for (it
    computes b + left + right logits a query, in b x K matmuls).
    """
    n, d, width = q.shape[dim], q.shape[-1], left + 1 + right
    s = d**-0.5 if scale is None else scale
    inf = float("-inf")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        pad = (0, 0) * (q.dim() - 1 - dim) + (left, right)
        kp, vp = F.pad(k, pad), F.pad(v, pad)  # row r is position r - left
        logits = torch.stack([(q * kp.narrow(dim, o, n)).sum(-1) for o in range(width)])  # (W, *q.shape[:-1])
        edge = _edge_mask(n, left, right, dim, q.dim(), q.device)  # True: the key lies off the sequence
        w = logits.mul(s).masked_fill(edge, inf).softmax(dim=0)
        w = F.dropout(w, dropout_p) if dropout_p > 0 else w
        return sum(w[o].unsqueeze(-1) * vp.narrow(dim, o, n) for o in range(width))
    logits = q.new_empty(width, *q.shape[:-1])
    for o in range(width):
        lo, hi = max(0, left - o), min(n, n + left - o)  # the queries whose key i + o - left exists
        if hi > lo:
            torch.sum(q.narrow(dim, lo, hi - lo) * k.narrow(dim, lo + o - left, hi - lo), -1,
                      out=logits[o].narrow(dim, lo, hi - lo))
        end = min(n, max(lo, hi))  # (with no such query, every row is filled below)
        logits[o].narrow(dim, 0, min(lo, n)).fill_(inf)
        logits[o].narrow(dim, end, n - end).fill_(inf)
    w = logits.mul_(s).softmax(dim=0)
    w = F.dropout(w, dropout_p) if dropout_p > 0 else w
    out = w[left].unsqueeze(-1) * v  # the query's own key (always there)
    for o in range(width):
        lo, hi = max(0, left - o), min(n, n + left - o)
        if o != left and hi > lo:
            out.narrow(dim, lo, hi - lo).addcmul_(w[o].narrow(dim, lo, hi - lo).unsqueeze(-1),
                                                  v.narrow(dim, lo + o - left, hi - lo))
    return out


# Which method a call takes: None chooses by the cost model below; "per_query" or "blocked"
# forces one (for tests and benchmarks/attention_core.py, which times both).
_FORCE: str | None = None


def _per_query_wins(batch_heads: int, n: int, left: int, right: int, d: int, b: int,
                    device: torch.device) -> bool:
    """True when :func:`_per_query` should beat the blocked method (CPU only; elsewhere the
    blocks are one SDPA call and W elementwise passes would be W times the kernel launches).

    A cost model in microseconds, fitted to 1-thread timings on an x86 core
    (``benchmarks/attention_core.py --only local-methods`` prints both methods' times and
    this choice over a grid of configurations):

    - blocked: ~0.9 us of matmul and softmax call overhead per (sample, head, block), plus
      0.15 ns per (query, key, d) at GEMM speed, K = b + left + right keys a query;
    - per-query: ~30 us of calls per key offset, plus 1.1 ns per (query, offset, d)
      elementwise, W = left + 1 + right offsets.

    The per-query method is taken only when predicted 15 % faster, so a misprediction near
    the crossover costs little. It wins on short blocks (the tiny b x K matmuls are mostly
    call overhead) and loses on long windows, where the blocked matmuls run at GEMM speed.
    """
    if _FORCE is not None:
        return _FORCE == "per_query"
    if device.type != "cpu" or torch.compiler.is_compiling():  # (traced: no guard on the batch)
        return False
    width, kk = left + 1 + right, b + left + right
    blocked = batch_heads * -(-n // b) * 0.9 + batch_heads * n * kk * d * 0.15e-3
    per_query = width * 30 + batch_heads * n * width * d * 1.1e-3
    return per_query < 0.85 * blocked


@memo_table()
def _edge_mask(n: int, left: int, right: int, dim: int, ndim: int, device: Any) -> torch.Tensor:
    """Bool, True where key offset o of query i lies off the sequence (before 0 or from N on),
    shaped to broadcast against the (W, *q.shape[:-1]) logits of a q with ``ndim`` dims and
    its N positions along ``dim``: (W, 1, ..., N, 1, ...)."""
    j = torch.arange(n, device=device) + torch.arange(-left, right + 1, device=device)[:, None]  # (W, N)
    return ((j < 0) | (j >= n)).view(left + 1 + right, *(1,) * dim, n, *(1,) * (ndim - 2 - dim))


# On inference, the blocks' logits are computed a chunk of blocks at a time so that, per
# sample, they (and the matmul's copies of the unfolded keys) stay under this many elements
# or an eighth of q, whichever is larger: peak memory O(N d), not O(N (b + left + right)).
_CHUNK_ELEMENTS = 1 << 15


def _blocked(
    qp: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, n: int, left: int, right: int, b: int,
    dropout_p: float, scale: float | None, use_sdpa: bool | None,
) -> torch.Tensor:
    """The blocked computation on padded inputs: qp (B, h, nb*b, d), kp and vp (B, h, nb*b +
    left + right, d) (key row r is position r - left). Returns (B, nb, b, h, d)."""
    b_, h, nq, d = qp.shape
    nb, kk = nq // b, b + left + right
    qb = qp.view(b_, h, nb, b, d) if qp.is_contiguous() else qp.reshape(b_, h, nb, b, d)  # (B, h, nb, b, d)
    kt = kp.unfold(2, kk, b)  # (B, h, nb, d, K), a view
    vb = vp.unfold(2, kk, b).transpose(-1, -2)  # (B, h, nb, K, d), a view
    if not (qp.device.type != "cpu" if use_sdpa is None else use_sdpa):
        # On CPU, SDPA with a mask takes its generic path, about 2x slower than this.
        s = d**-0.5 if scale is None else scale
        masked = _block_mask_out(n, b, left, right, qp.device)  # (nb, b, K), True = no key
        # per sample (the batch cancels, so an export with a dynamic batch sees no guard on it)
        chunk = max(1, max(_CHUNK_ELEMENTS, h * nq * d // 8) // (h * b * kk))
        if (torch.is_grad_enabled() and any(t.requires_grad for t in (qp, kp, vp))) or dropout_p > 0 \
                or chunk >= nb:
            # softmax(q k^T * scale + band) v, per block (all blocks fit one chunk, or autograd)
            w = (qb @ kt).mul_(s).masked_fill_(masked, float("-inf")).softmax(dim=-1)  # (B, h, nb, b, K)
            w = F.dropout(w, dropout_p) if dropout_p > 0 else w
            return (w @ vb).permute(0, 2, 3, 1, 4)  # (B, nb, b, h, d)
        # Inference on long inputs: a chunk of blocks at a time, each chunk's output written
        # straight into the (B, nb, b, h, d) result (the caller's layout).
        out = qp.new_empty(b_, nb, b, h, d)
        for t in range(0, nb, chunk):
            c = slice(t, t + chunk)
            w = (qb[:, :, c] @ kt[:, :, c]).mul_(s).masked_fill_(masked[c], float("-inf"))  # (B, h, c, b, K)
            out[:, c].copy_((w.softmax(dim=-1) @ vb[:, :, c]).permute(0, 2, 3, 1, 4))
        return out
    mask = _block_mask(n, b, left, right, qp.device)  # (nb, b, K)
    out = F.scaled_dot_product_attention(
        qb.reshape(b_, h * nb, b, d), kt.transpose(-1, -2).reshape(b_, h * nb, kk, d),
        vb.reshape(b_, h * nb, kk, d), attn_mask=mask.repeat(h, 1, 1), dropout_p=dropout_p, scale=scale,
    )  # (B, h*nb, b, d)
    return out.view(b_, h, nb, b, d).permute(0, 2, 3, 1, 4)  # (B, nb, b, h, d)


@register(
    name="local_attention",
    family="attention",
    paper="Longformer: The Long-Document Transformer",
    arxiv="2004.05150",
    year=2020,
    input="tokens",
    example=Example(config=dict(dim=16, window=2, num_heads=4, block_size=3), inputs=tokens("dim"),
                    size=(8,), out_shape="same", tiny=dict(dim=8, num_heads=2)),
)
class LocalAttention(nn.Module):
    r"""Multi-head self-attention restricted to a sliding window of +-w tokens.

    Longformer (Beltagy et al., arXiv 2004.05150), sliding-window attention without the
    global tokens; the truncated self-attention of long-sequence speech models.

    Equation, per head::

        head_i = sum_{|j - i| <= w} softmax_j(q_i . k_j / sqrt(d)) v_j
        y = Concat(heads) W^O,    q, k, v = x W^Q, x W^K, x W^V

    Computed blockwise (``local_window_attention``): never an N x N matrix, memory
    O(N * w). On CPU, where short blocks would make the blocked method mostly matmul-call
    overhead, each query is scored against exactly its 2w + 1 keys, one offset at a time,
    on views of the projection. In the blocked method, where padding adds at most N / 8
    rows, the tokens, not q, k and v, are padded to the blocks, so q, k, v stay views of one
    projection (at N = 4096, w = 16 an inference forward peaks below fused full SDPA's).
    While ``attn_map`` is recorded, the dense banded weights (B, h, N, N) are computed
    instead, for figures.

    Args:
        dim: C, the token width.
        window: w (each token attends to offsets -w..w, i.e. 2w + 1 keys) or
            (left, right); ``(w, 0)`` is causal. Longformer's window size = 2w + 1.
        num_heads: h.
        head_dim: d (default dim // num_heads).
        qkv_bias: biases on the q, k, v projections.
        dropout: dropout on the attention weights.
        block_size: the query block of the blocked computation (default
            max(w, 16)); it changes speed only, never the result (and a small one on CPU
            may make the per-query method the faster, which is then taken).

    Shape:
        - Input: (B, N, C), C = dim, any N.
        - Output: (B, N, C).

    Deviations:
        Longformer's global-attention tokens and dilation are not included.

    Example:
        >>> attn = LocalAttention(64, window=16, num_heads=4)
        >>> attn(torch.randn(1, 4096, 64)).shape
        torch.Size([1, 4096, 64])
    """

    def __init__(
        self,
        dim: int,
        window: int | tuple[int, int],
        num_heads: int = 8,
        *,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        block_size: int | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        left, right = (window, window) if isinstance(window, int) else tuple(window)
        require(left >= 0 and right >= 0, f"LocalAttention: window={window} must be >= 0")
        if head_dim is None:
            head_dim = require_divides("LocalAttention", "num_heads", num_heads, "dim", dim)
        require(block_size is None or block_size > 0, f"LocalAttention: block_size={block_size} must be > 0")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, head_dim
        self.window = (left, right)
        self.block_size = block_size
        self.dropout = dropout
        fk = dict(device=device, dtype=dtype)
        self.qkv = nn.Linear(dim, 3 * num_heads * head_dim, bias=qkv_bias, **fk)
        self.proj = nn.Linear(num_heads * head_dim, dim, **fk)
        self.attn_map = AttentionMap("weights")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = check_shape(x, "B N C", name="LocalAttention", C=self.dim).values()
        h, d = self.num_heads, self.head_dim
        p = self.dropout if self.training else 0.0
        if self.attn_map.active:
            q, k, v = self.qkv(x).view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, d)
            mask = band_mask(n, *self.window, device=x.device)
            out, w = scaled_dot_product_attention(q, k, v, mask, p, return_weights=True)
            self.attn_map(w)  # (B, h, N, N)
            return self.proj(out.transpose(1, 2).reshape(b, n, h * d))  # (B, N, C)
        left, right = self.window
        blk = self.block_size or max(left, right, 16)
        if _per_query_wins(b * h, n, left, right, d, blk, x.device):
            q, k, v = call(self.qkv, x).view(b, n, 3, h, d).unbind(2)  # 3 x (B, N, h, d), views
            out = _per_query(q, k, v, 1, left, right, p, None)  # (B, N, h, d)
            return call(self.proj, out.flatten(2))  # (B, N, C)
        pad = -n % blk
        if (left + right + pad) * 8 > n:  # short sequences: padding the tokens would add > 1/8 work
            # pad the projection once (zero rows: masked keys and discarded queries)
            qkv = F.pad(call(self.qkv, x), (0, 0, left, pad + right))  # (B, left + nb*b + right, 3 h d)
        else:
            # Pad the tokens, not q, k and v: the padded rows' projections are masked keys and
            # discarded queries, and q, k, v stay views of one qkv buffer (no padded copies).
            qkv = call(self.qkv, F.pad(x, (0, 0, left, pad + right)))  # (B, left + nb*b + right, 3 h d)
        q, k, v = qkv.view(b, -1, 3, h, d).permute(2, 0, 3, 1, 4)  # 3 x (B, h, left + nb*b + right, d)
        out = _blocked(q[:, :, left:left + n + pad], k, v, n, left, right, blk, p, None, None)
        del qkv, q, k, v  # (peak memory: the projection below need not hold them)
        return call(self.proj, out.flatten(1, 2)[:, :n].flatten(2))  # (B, N, C)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window={self.window}, num_heads={self.num_heads}, head_dim={self.head_dim}"
