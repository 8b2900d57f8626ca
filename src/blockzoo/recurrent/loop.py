r"""The plain autograd time loop: one direction of one layer, step by step under autograd.

Paper: Backpropagation Through Time: What It Does and How to Do It (Werbos), Proc.
IEEE 78(10), 1990 (autograd through the loop is that algorithm).

The layers run it where no fused kernel and no scan of ``scan.py`` applies: Elman
and GRU with ``fused=False`` (or under ``torch.export`` with lengths), and the LSTM
and Jordan under ``torch.compile``/``torch.export`` tracing, under autocast, inside
``scan.autograd_loop()`` or (Jordan) with an activation the scan cannot
differentiate. Each family gives the step (its ``*_step`` equations) as a function;
autograd records every step, so any activation and double backward work.

Letters: B batch, T time steps, F input features, G*H step-input features (G gates),
H state size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__: list[str] = []

Parts = tuple[torch.Tensor, ...]
# step(gx_t, *state) -> (output y_t, new state parts): one time step of a family.
Step = Callable[..., tuple[torch.Tensor, Parts]]


def sum_bias(b_ih: torch.Tensor | None, b_hh: torch.Tensor | None) -> torch.Tensor | None:
    """b_ih + b_hh, folded into the input projection (None when the layer has no biases)."""
    return b_ih if b_ih is None or b_hh is None else b_ih + b_hh


def project(p: dict[str, torch.Tensor], x: torch.Tensor, *, fold_hh: bool = True) -> list[torch.Tensor]:
    """Step inputs W_ih x_t + b_ih (+ b_hh when ``fold_hh``), one matrix product for all steps.

    ``unbind`` into T tensors (B, G*H) (not ``gx[:, t]``, whose backward writes T
    full-size zero tensors).
    """
    b = sum_bias(p.get("bias_ih"), p.get("bias_hh")) if fold_hh else p.get("bias_ih")
    return list(F.linear(x, p["weight_ih"], b).unbind(1))  # T x (B, G*H)


def time_loop(
    step: Step, gx: list[torch.Tensor], state: Parts, mask: torch.Tensor | None, reverse: bool
) -> tuple[torch.Tensor, Parts]:
    """Run ``step`` over the T step inputs ``gx``; a padded step (mask False) keeps the state.

    Args:
        step: ``step(gx_t, *state) -> (y_t, new state parts)``.
        gx: T step inputs, each (B, G*H), from ``project``.
        state: the initial state parts, each (B, H).
        mask: (B, T) bool, False at padded steps, or None.
        reverse: run t = T-1 .. 0.

    Returns:
        (output (B, T, H), zero at padded steps; the final state parts).
    """
    t = len(gx)
    masks = [None] * t if mask is None else list(mask[..., None].unbind(1))  # T x (B, 1)
    outs: list[torch.Tensor] = [state[0]] * t
    for k in range(t - 1, -1, -1) if reverse else range(t):
        outs[k], new = step(gx[k], *state)
        m = masks[k]
        state = new if m is None else tuple(torch.where(m, n, o) for n, o in zip(new, state, strict=True))
    out = torch.stack(outs, dim=1)  # (B, T, H)
    return out if mask is None else out * mask[..., None].to(out.dtype), state
