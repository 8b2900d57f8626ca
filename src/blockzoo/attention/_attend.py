"""Shared helpers of the window / transformer-style image attention files.

Private (the leading underscore keeps the room's generated re-export list from naming it): the
softmax-attention core with its explicit path for ``record_attention``, padding
to a multiple, and the 2-tuple argument helper.

Letters: B batch, C channels, H W spatial, h heads, N queries, M keys, d head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import require

__all__: list[str] = []


def pair(v: int | tuple[int, int], what: str, owner: str) -> tuple[int, int]:
    """``v`` as an (H, W) pair of positive ints; ``ValueError`` naming ``owner`` otherwise."""
    t = (v, v) if isinstance(v, int) else tuple(v)
    require(len(t) == 2 and all(isinstance(i, int) and i > 0 for i in t),
            f"{owner}: {what}={v!r} must be a positive int or a pair of them")
    return t[0], t[1]


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_map: AttentionMap,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    r"""softmax(q k^T * scale + bias) v over the last two dims, with any leading dims.

    ``bias`` is an additive float mask broadcastable to (..., N, M); ``-inf`` masks a
    key. Uses ``F.scaled_dot_product_attention`` unless ``attn_map`` is recording, in
    which case the weights are materialised and passed through ``attn_map``.

    Shape: q (..., N, d), k (..., M, d), v (..., M, e) -> (..., N, e).
    """
    if not attn_map.active:
        if bias is not None and bias.requires_grad and not torch.is_grad_enabled():
            # a learned bias under no_grad: its views keep requires_grad, which sends SDPA to
            # its unfused math kernel on CPU; detached, it takes the fused one
            bias = bias.detach()
        if q.dim() == 4:
            if bias is not None and bias.dim() < 4:  # (SDPA's fused CPU kernel takes 4-D masks only)
                bias = bias[(None,) * (4 - bias.dim())]
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
        # Other ranks go through a 4-D view (ONNX's attention takes only 4-D inputs):
        # the leading dims merge into (L, h), h the last of them.
        lead, (N, d), (M, e) = q.shape[:-2], q.shape[-2:], v.shape[-2:]
        h = lead[-1] if lead else 1
        out = F.scaled_dot_product_attention(
            q.reshape(-1, h, N, d), k.reshape(-1, h, M, d), v.reshape(-1, h, M, e),
            attn_mask=None if bias is None else _bias_4d(bias, lead, N, M), scale=scale,
        )
        return out.reshape(*lead, N, e)
    s = q.shape[-1] ** -0.5 if scale is None else scale
    # A = softmax(q k^T s + bias)
    logits = (q @ k.transpose(-2, -1)) * s  # (..., N, M)
    if bias is not None:
        logits = logits + bias
    weights = attn_map(logits.softmax(dim=-1))  # (..., N, M)
    return weights @ v


def pad_to_multiple(x: torch.Tensor, mh: int, mw: int) -> tuple[torch.Tensor, int, int]:
    """Zero-pad (B, C, H, W) at the bottom and right to multiples of (mh, mw).

    Returns the padded tensor and the pads (ph, pw); no copy when nothing is needed.
    """
    H, W = x.shape[-2:]
    ph, pw = (-H) % mh, (-W) % mw
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return x, ph, pw


def key_mask(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask from a boolean ``valid`` (True = a real key): 0 there, -inf elsewhere."""
    zero = torch.zeros((), dtype=dtype, device=valid.device)
    return torch.where(valid, zero, torch.full_like(zero, float("-inf")))


def _bias_4d(bias: torch.Tensor, lead: torch.Size, N: int, M: int) -> torch.Tensor:
    """A bias broadcastable to (*lead, N, M) as a 4-D one broadcastable to (L, h, N, M).

    Expands (copies) only when the bias varies along the merged leading dims.
    """
    b = bias.reshape((1,) * (len(lead) + 2 - bias.dim()) + tuple(bias.shape))
    if all(s == 1 for s in b.shape[:-3]):
        return b.reshape(1, b.shape[-3], b.shape[-2], b.shape[-1])
    return b.expand(*lead, N, M).reshape(-1, lead[-1], N, M)
