r"""Time loops with hand-derived back-propagation through time: peephole LSTM and Jordan.

Papers: Learning Precise Timing with LSTM Recurrent Networks (Gers, Schraudolph,
Schmidhuber), JMLR 3, 2002; Serial Order: A Parallel Distributed Processing
Approach (Jordan), ICS Report 8604, 1986; Backpropagation Through Time: What It
Does and How to Do It (Werbos), Proc. IEEE 78(10), 1990.

PyTorch has no fused kernel for these two layers, and a time loop of ordinary
tensor operations under autograd records ~15 nodes per step whose backward runs
~25 small operations. Here one ``torch.autograd.Function`` per (layer, direction)
does the whole scan instead:

- forward: the loop runs with no autograd graph, writing each step's
  post-activation gates and states into preallocated (T, B, .) buffers (without
  gradients, for inference, the same loop runs without keeping the gates);
- backward: back-propagation through time, derived by hand from the step
  equations (written above the lines that compute them), in reverse time order:
  per step a few in-place pointwise products on the saved gates and one matrix
  product for dh_{t-1} (Jordan: two, through W_ho and W_sh); after the loop the
  weight gradients as single products over all steps, dW_hh = sum_t da_t^T h_{t-1},
  the peephole gradients as sums, and the gradient of the input projection
  W_ih x + b (computed time-major by the caller with ``F.linear``) returned as one
  (T, B, G) tensor, so W_ih and the biases get theirs from ``F.linear``'s backward.

What is left of the gap to PyTorch's fused kernels is mostly the matrix
products, which the scan leaves to ``mm`` as the autograd loop did. Choices made
by measurement (benchmarks/recurrent.py; the numbers are in docs/benchmarks.md):
the pointwise factors of the backward are computed per step (cache-hot (B, H)
tensors) rather than for all steps at once (several (T, B, H) passes through
memory); tanh is computed as 2 sigmoid(2x) - 1 on CPU (``_tanh_``); a step's
pointwise maths is not compiled with ``torch.compile``, whose compiled call was
no faster than the in-place eager ops and costs seconds to compile.

Double backward is not supported (``once_differentiable``). The layers use these
scans in eager mode; under ``torch.compile``/``torch.export`` tracing, under
autocast, inside ``autograd_loop()`` or (Jordan) with an activation whose
derivative is not known here (``jordan_scan_applies``), they run the autograd
time loop of ``loop.py``.

Letters: B batch, T time steps, H hidden size, O Jordan output size, G = 4H
(LSTM gates i, f, g, o) or H (Jordan). State buffers are (T+1, B, .) in time
order: the forward direction reads slot t and writes slot t+1 (initial state in
slot 0, final in slot T); the reverse direction reads t+1 and writes t.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["autograd_loop", "jordan_scan", "lstm_scan"]

_FORCE_AUTOGRAD = [False]


@contextlib.contextmanager
def autograd_loop() -> Iterator[None]:
    """Within this block the layers run their time loop under autograd, as before the scans.

    For comparisons (tests, ``benchmarks/recurrent.py``); the results are the same
    up to rounding.
    """
    before = _FORCE_AUTOGRAD[0]
    _FORCE_AUTOGRAD[0] = True
    try:
        yield
    finally:
        _FORCE_AUTOGRAD[0] = before


def scan_applies(x: torch.Tensor) -> bool:
    """Whether the hand-written scans may run: eager mode, no autocast, not forced off."""
    return not (_FORCE_AUTOGRAD[0] or torch.compiler.is_compiling() or torch.compiler.is_exporting()
                or torch.is_autocast_enabled(x.device.type))


def _steps(t: int, reverse: bool) -> list[tuple[int, int, int]]:
    """(time step, slot of the previous state, slot of the new state) in the scan's order."""
    if reverse:
        return [(k, k + 1, k) for k in range(t - 1, -1, -1)]
    return [(k, k, k + 1) for k in range(t)]


def _prev_new(buf: torch.Tensor, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A (T+1, B, .) state buffer as (state before step t, state after step t), each (T, B, .)."""
    t = buf.shape[0] - 1
    return (buf[1:], buf[:t]) if reverse else (buf[:t], buf[1:])


def _masks(mask: torch.Tensor | None, dtype: torch.dtype) -> tuple[Any, Any, list[bool]]:
    """(B, T) mask as bool (T, B, 1), as 0/1 of ``dtype`` (T, B, 1), and per step 'every row live'."""
    if mask is None:
        return None, None, []
    m = mask.t()[..., None]  # (T, B, 1)
    return m, m.to(dtype), mask.all(0).tolist()


def _batch_first_out(new: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Time-major (T, B, H) values as the layer's (B, T, H) output, zero at padded steps."""
    out = new.new_empty(new.shape[1], new.shape[0], new.shape[2])  # (B, T, H)
    if mask is None:
        return out.copy_(new.transpose(0, 1))
    return torch.mul(new.transpose(0, 1), mask[..., None], out=out)


def _wants_grad(*ts: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def _tanh_(x: torch.Tensor) -> torch.Tensor:
    """tanh in place; on CPU as 2 sigma(2x) - 1, the same function (absolute error a few ulp).

    On CPU torch's sigmoid kernel was measured faster than its tanh (the ``_tanh_``
    row of benchmarks/recurrent.py).
    """
    if x.device.type != "cpu":
        return x.tanh_()
    return x.mul_(2).sigmoid_().mul_(2).sub_(1)


# --------------------------------------------------------------------------- peephole LSTM


def _lstm_forward(
    gx: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w_hh: torch.Tensor, peep: torch.Tensor | None,
    mask: torch.Tensor | None, reverse: bool, save: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The LSTM loop with no graph: gates (i, f, g, o) (T, B, 4H), tanh(c_t) (T, B, H), h and c buffers.

    Without ``save`` the gates and tanh(c_t) of each step overwrite the previous step's.
    """
    t, b, g4 = gx.shape
    h = g4 // 4
    s_buf = gx.new_empty(t + 1, b, h)  # h states
    c_buf = gx.new_empty(t + 1, b, h)  # cell states
    gates = gx.new_empty(t if save else 1, b, g4)  # post-activation (i, f, g, o)
    tanh_c = gx.new_empty(t if save else 1, b, h)
    first = t if reverse else 0
    s_buf[first], c_buf[first] = h0, c0
    w_t = w_hh.t()  # (H, 4H)
    m_bool, _, all_live = _masks(mask, gx.dtype)
    for k, p, n in _steps(t, reverse):
        j = k if save else 0
        h_prev, c_prev = s_buf[p], c_buf[p]
        # pre-activations W_ih x_t + b + W_hh h_{t-1}
        z = torch.addmm(gx[k], h_prev, w_t, out=gates[j])  # (B, 4H)
        zi, zf, zg, zo = z.view(b, 4, h).unbind(1)  # each (B, H)
        if peep is not None:
            # i, f pre-activations += (w_ci, w_cf) * c_{t-1}
            zi.addcmul_(c_prev, peep[0])
            zf.addcmul_(c_prev, peep[1])
        # i_t, f_t = sigma(.);  g_t = tanh(.)
        z[:, : 2 * h].sigmoid_()
        _tanh_(zg)
        # c_t = f_t * c_{t-1} + i_t * g_t
        c_new = torch.mul(zf, c_prev, out=c_buf[n]).addcmul_(zi, zg)
        if peep is not None:
            # o pre-activation += w_co * c_t
            zo.addcmul_(c_new, peep[2])
        zo.sigmoid_()
        # h_t = o_t * tanh(c_t)
        tc = _tanh_(tanh_c[j].copy_(c_new))
        torch.mul(zo, tc, out=s_buf[n])
        if m_bool is not None and not all_live[k]:
            # padded steps keep the previous state
            torch.where(m_bool[k], s_buf[n], h_prev, out=s_buf[n])
            torch.where(m_bool[k], c_buf[n], c_prev, out=c_buf[n])
    return gates, tanh_c, s_buf, c_buf


class _LSTMScan(torch.autograd.Function):
    """One direction of one (peephole) LSTM layer: forward loop and hand-derived BPTT."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, gx: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w_hh: torch.Tensor,
        peep: torch.Tensor | None, mask: torch.Tensor | None, reverse: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gates, tanh_c, s_buf, c_buf = _lstm_forward(gx, h0, c0, w_hh, peep, mask, reverse, save=True)
        ctx.save_for_backward(gates, tanh_c, s_buf, c_buf, w_hh, peep, mask)
        ctx.reverse = reverse
        last = 0 if reverse else gx.shape[0]
        return _batch_first_out(_prev_new(s_buf, reverse)[1], mask), s_buf[last].clone(), c_buf[last].clone()

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, d_out: torch.Tensor, d_hn: torch.Tensor, d_cn: torch.Tensor
    ) -> tuple[Any, ...]:
        gates, tanh_c, s_buf, c_buf, w_hh, peep, mask = ctx.saved_tensors
        t, b, g4 = gates.shape
        h = g4 // 4
        _, m, all_live = _masks(mask, gates.dtype)  # (T, B, 1)
        d_gates = torch.empty_like(gates)  # dL/d(pre-activations a_i, a_f, a_g, a_o)
        want_peep = peep is not None and ctx.needs_input_grad[4]
        d_peep = gates.new_zeros(3, b, h) if want_peep else None  # per-row sums, reduced at the end
        dh, dc = d_hn, d_cn  # dL/dh_t, dL/dc_t from step t+1 (or from the final state)
        for k, p, n in reversed(_steps(t, ctx.reverse)):
            i, f, g, o = gates[k].view(b, 4, h).unbind(1)  # each (B, H)
            da_i, da_f, da_g, da_o = d_gates[k].view(b, 4, h).unbind(1)
            tc, c_prev = tanh_c[k], c_buf[p]
            live = m is None or all_live[k]
            # dL/dh_t: from step t+1 and from the output y_t = h_t (a padded step has neither)
            dhn = dh + d_out[:, k]
            if not live:
                dhn.mul_(m[k])
            # h_t = o_t tanh(c_t):  u = dL/dh_t o_t,  v = dL/dh_t o_t tanh(c_t)
            u = dhn * o
            v = u * tc
            # dL/da_o = dL/dh_t tanh(c_t) o_t (1 - o_t) = v - v o_t
            torch.addcmul(v, v, o, value=-1, out=da_o)
            # dL/dc_t = dL/dc_t(step t+1) + dL/dh_t o_t (1 - tanh^2 c_t) + dL/da_o w_co
            dcn = torch.addcmul(dc + u, v, tc, value=-1)
            if peep is not None:
                dcn.addcmul_(da_o, peep[2])
            if not live:
                dcn.mul_(m[k])  # a padded step's gates get nothing; dc passes by (below)
            # dL/da_g = dL/dc_t i_t (1 - g_t^2) = r - s g_t,  r = dL/dc_t i_t,  s = r g_t
            r = dcn * i
            s = r * g
            torch.addcmul(r, s, g, value=-1, out=da_g)
            # dL/da_i = dL/dc_t g_t i_t (1 - i_t) = s - s i_t
            torch.addcmul(s, s, i, value=-1, out=da_i)
            # dL/da_f = dL/dc_t c_{t-1} f_t (1 - f_t) = q - q f_t,  q = dL/dc_t c_{t-1} f_t
            q = (dcn * c_prev).mul_(f)
            torch.addcmul(q, q, f, value=-1, out=da_f)
            # dL/dc_{t-1} = dL/dc_t f_t + dL/da_i w_ci + dL/da_f w_cf
            dc_prev = dcn.mul_(f)
            if peep is not None:
                dc_prev.addcmul_(da_i, peep[0]).addcmul_(da_f, peep[1])
            if d_peep is not None:
                # dL/dw_ci += dL/da_i c_{t-1};  dL/dw_cf += dL/da_f c_{t-1};  dL/dw_co += dL/da_o c_t
                d_peep[0].addcmul_(da_i, c_prev)
                d_peep[1].addcmul_(da_f, c_prev)
                d_peep[2].addcmul_(da_o, c_buf[n])
            # dL/dh_{t-1} = dL/da W_hh   (a padded step passes dL/dh_t, dL/dc_t through)
            if live:
                dh, dc = torch.mm(d_gates[k], w_hh), dc_prev
            else:
                keep = 1 - m[k]
                dh, dc = torch.addmm(dh * keep, d_gates[k], w_hh), dc_prev.addcmul_(dc, keep)
        h_prev, _ = _prev_new(s_buf, ctx.reverse)
        # dW_hh = sum_t dL/da_t^T h_{t-1}: one product over all steps
        d_w = d_gates.flatten(0, 1).t() @ h_prev.flatten(0, 1) if ctx.needs_input_grad[3] else None  # (4H, H)
        d_peep = None if d_peep is None else d_peep.sum(1)  # (3, H)
        return d_gates, dh, dc, d_w, d_peep, None, None


def lstm_scan(
    gx: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w_hh: torch.Tensor, peep: torch.Tensor | None,
    mask: torch.Tensor | None, reverse: bool,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    r"""One direction of one LSTM layer (peepholes optional) over all steps.

    Equations (w_c* only with ``peep``)::

        i_t = sigma(gx_i + W_hi h_{t-1} + w_ci * c_{t-1})
        f_t = sigma(gx_f + W_hf h_{t-1} + w_cf * c_{t-1})
        g_t = tanh (gx_g + W_hg h_{t-1})
        c_t = f_t * c_{t-1} + i_t * g_t
        o_t = sigma(gx_o + W_ho h_{t-1} + w_co * c_t)
        h_t = o_t * tanh(c_t)

    Args:
        gx: (T, B, 4H) input projections W_ih x_t + b_ih + b_hh, time-major.
        h0, c0: (B, H) initial state.
        w_hh: (4H, H) recurrent weight.
        peep: (3, H) = (w_ci, w_cf, w_co) or None.
        mask: (B, T) bool, False at padded steps (the state is kept, the output is 0).
        reverse: run t = T-1 .. 0.

    Returns:
        (output (B, T, H), (h_n, c_n)), differentiable w.r.t. every tensor argument.
    """
    if _wants_grad(gx, h0, c0, w_hh, peep):
        out, hn, cn = _LSTMScan.apply(gx, h0, c0, w_hh, peep, mask, reverse)
        return out, (hn, cn)
    _, _, s_buf, c_buf = _lstm_forward(gx, h0, c0, w_hh, peep, mask, reverse, save=False)
    last = 0 if reverse else gx.shape[0]
    return _batch_first_out(_prev_new(s_buf, reverse)[1], mask), (s_buf[last].clone(), c_buf[last].clone())


# --------------------------------------------------------------------------- Jordan

# Activations whose derivative is written here from their output y.
_FROM_OUTPUT = {nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.ReLU: "relu", nn.Identity: "identity"}
# Elementwise activations without parameters: act'(a) from the saved pre-activations a,
# by autograd over all steps at once (one vectorised call, not one per step).
_ELEMENTWISE = (nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Mish,
                nn.Softplus)


def _act_kind(act: nn.Module) -> str | None:
    """How the scan differentiates ``act``: from its output, by autograd over all steps, or not at all."""
    if type(act) in _FROM_OUTPUT:
        return _FROM_OUTPUT[type(act)]
    if type(act) in _ELEMENTWISE and not getattr(act, "inplace", False):
        return "elementwise"
    return None


def jordan_scan_applies(act: nn.Module, out_act: nn.Module) -> bool:
    """Whether ``jordan_scan`` can differentiate both activations (else the layer loops under autograd)."""
    return _act_kind(act) is not None and _act_kind(out_act) is not None


def _act_(kind: str, act: nn.Module, pre: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = act(pre); for the kinds differentiated from the output, ``out`` is ``pre`` (in place)."""
    if kind == "tanh":
        return _tanh_(out)
    if kind == "sigmoid":
        return out.sigmoid_()
    if kind == "relu":
        return out.clamp_(min=0)
    if kind == "identity":
        return out
    return out.copy_(act(pre))


def _act_derivative(kind: str, act: nn.Module, pre: torch.Tensor | None) -> torch.Tensor | None:
    """act'(a) for all steps (T, B, .) where it is not written from the output (else None)."""
    if kind != "elementwise" or pre is None:  # the forward saves pre for this kind
        return None
    with torch.enable_grad():
        a = pre.detach().requires_grad_()
        (grad,) = torch.autograd.grad(act(a), a, torch.ones_like(a))
    return grad


def _act_backward(kind: str, grad: torch.Tensor, y: torch.Tensor, deriv: torch.Tensor | None,
                  out: torch.Tensor) -> torch.Tensor:
    """out = grad * act'(a), from the output y = act(a) (or the precomputed derivative)."""
    if kind == "tanh":
        # tanh' = 1 - y^2:  grad - (grad y) y
        return torch.addcmul(grad, grad * y, y, value=-1, out=out)
    if kind == "sigmoid":
        # sigma' = y (1 - y):  q - q y,  q = grad y
        q = grad * y
        return torch.addcmul(q, q, y, value=-1, out=out)
    if kind == "relu":
        return torch.mul(grad, y > 0, out=out)
    if kind == "identity" or deriv is None:
        return out.copy_(grad)
    return torch.mul(grad, deriv, out=out)


def _jordan_forward(
    gx: torch.Tensor, s0: torch.Tensor, w_sh: torch.Tensor, w_ho: torch.Tensor, b_ho: torch.Tensor | None,
    mask: torch.Tensor | None, reverse: bool, decay: float, acts: tuple[str, nn.Module, str, nn.Module],
    save: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The Jordan loop with no graph: h (T, B, H), pre-activations a (or None), y (T, B, O), z, states.

    The pre-activations are kept only for the activations differentiated by autograd;
    without ``save`` each step's h, a and z overwrite the previous step's.
    """
    t, b, hsz = gx.shape
    o = w_ho.shape[0]
    kind, act, out_kind, out_act = acts
    n_buf = t if save else 1
    hid = gx.new_empty(n_buf, b, hsz)  # h_t
    y_buf = gx.new_empty(t, b, o)  # y_t: the output, always kept
    a_pre = gx.new_empty(n_buf, b, hsz) if kind == "elementwise" else None
    z_pre = gx.new_empty(n_buf, b, o) if out_kind == "elementwise" else None
    s_buf = gx.new_empty(t + 1, b, o)  # state units
    s_buf[t if reverse else 0] = s0
    w_sh_t, w_ho_t = w_sh.t(), w_ho.t()  # (O, H), (H, O)
    m_bool, _, all_live = _masks(mask, gx.dtype)
    for k, p, n in _steps(t, reverse):
        j = k if save else 0
        s = s_buf[p]
        # h_t = act(W_ih x_t + b_ih + W_sh s_t)
        a = torch.addmm(gx[k], s, w_sh_t, out=hid[j] if a_pre is None else a_pre[j])  # (B, H)
        hk = _act_(kind, act, a, hid[j])
        # y_t = out_act(W_ho h_t + b_ho)
        z_out = y_buf[k] if z_pre is None else z_pre[j]
        z = torch.mm(hk, w_ho_t, out=z_out) if b_ho is None else torch.addmm(b_ho, hk, w_ho_t, out=z_out)
        yk = _act_(out_kind, out_act, z, y_buf[k])  # (B, O)
        # s_{t+1} = decay * s_t + y_t
        if decay:
            torch.add(yk, s, alpha=decay, out=s_buf[n])
        else:
            s_buf[n].copy_(yk)
        if m_bool is not None and not all_live[k]:
            # padded steps keep the previous state
            torch.where(m_bool[k], s_buf[n], s, out=s_buf[n])
    return hid, a_pre, y_buf, z_pre, s_buf


class _JordanScan(torch.autograd.Function):
    """One direction of one Jordan layer: forward loop and hand-derived BPTT."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, gx: torch.Tensor, s0: torch.Tensor, w_sh: torch.Tensor, w_ho: torch.Tensor,
        b_ho: torch.Tensor | None, mask: torch.Tensor | None, reverse: bool, decay: float,
        acts: tuple[str, nn.Module, str, nn.Module],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hid, a_pre, y_buf, z_pre, s_buf = _jordan_forward(gx, s0, w_sh, w_ho, b_ho, mask, reverse, decay,
                                                          acts, save=True)
        ctx.save_for_backward(hid, a_pre, y_buf, z_pre, s_buf, w_sh, w_ho, mask)
        ctx.reverse, ctx.decay, ctx.acts = reverse, decay, acts
        return _batch_first_out(y_buf, mask), s_buf[0 if reverse else gx.shape[0]].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_out: torch.Tensor, d_sn: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        hid, a_pre, y_buf, z_pre, s_buf, w_sh, w_ho, mask = ctx.saved_tensors
        decay, (kind, act, out_kind, out_act) = ctx.decay, ctx.acts
        t = hid.shape[0]
        _, m, all_live = _masks(mask, hid.dtype)  # (T, B, 1)
        deriv_a = _act_derivative(kind, act, a_pre)  # (T, B, H) or None
        deriv_z = _act_derivative(out_kind, out_act, z_pre)  # (T, B, O) or None
        d_z = torch.empty_like(y_buf)  # dL/dz_t
        d_a = torch.empty_like(hid)  # dL/da_t
        ds = d_sn  # dL/ds_{t+1}
        for k, _, _ in reversed(_steps(t, ctx.reverse)):
            live = m is None or all_live[k]
            # dL/dy_t = dL/ds_{t+1} + the output's gradient (neither at a padded step)
            dy = ds + d_out[:, k]
            if not live:
                dy.mul_(m[k])
            # dL/dz_t = dL/dy_t out_act'(z_t)
            _act_backward(out_kind, dy, y_buf[k], None if deriv_z is None else deriv_z[k], d_z[k])
            # dL/da_t = (dL/dz_t W_ho) act'(a_t)
            _act_backward(kind, d_z[k] @ w_ho, hid[k], None if deriv_a is None else deriv_a[k], d_a[k])
            # dL/ds_t = dL/da_t W_sh + dL/ds_{t+1} ds_{t+1}/ds_t   (decay, or 1 at a padded step)
            if not live:
                ds = torch.addmm(ds * (1 - (1 - decay) * m[k]), d_a[k], w_sh)  # (B, O)
            elif decay:
                ds = torch.addmm(ds, d_a[k], w_sh, beta=decay)
            else:
                ds = torch.mm(d_a[k], w_sh)
        s_prev, _ = _prev_new(s_buf, ctx.reverse)
        # dW_sh = sum_t dL/da_t^T s_t;  dW_ho = sum_t dL/dz_t^T h_t;  db_ho = sum_t dL/dz_t
        need = ctx.needs_input_grad
        d_w_sh = d_a.flatten(0, 1).t() @ s_prev.flatten(0, 1) if need[2] else None  # (H, O)
        d_w_ho = d_z.flatten(0, 1).t() @ hid.flatten(0, 1) if need[3] else None  # (O, H)
        d_b_ho = d_z.sum((0, 1)) if need[4] else None
        return d_a, ds, d_w_sh, d_w_ho, d_b_ho, None, None, None, None


def jordan_scan(
    gx: torch.Tensor, s0: torch.Tensor, w_sh: torch.Tensor, w_ho: torch.Tensor, b_ho: torch.Tensor | None,
    mask: torch.Tensor | None, reverse: bool, decay: float, act: nn.Module, out_act: nn.Module,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One direction of one Jordan layer over all steps.

    Equations (a, z: the pre-activations)::

        h_t     = act(a_t),      a_t = gx_t + W_sh s_t
        y_t     = out_act(z_t),  z_t = W_ho h_t + b_ho
        s_{t+1} = decay * s_t + y_t

    Args:
        gx: (T, B, H) input projections W_ih x_t + b_ih, time-major.
        s0: (B, O) initial state units.
        w_sh: (H, O), w_ho: (O, H), b_ho: (O,) or None.
        mask: (B, T) bool, False at padded steps (the state is kept, the output is 0).
        reverse: run t = T-1 .. 0.
        decay: the state units' self-connection.
        act, out_act: activations for which ``jordan_scan_applies`` holds.

    Returns:
        (output (B, T, O), final state (B, O)), differentiable w.r.t. every tensor argument.
    """
    kind, out_kind = _act_kind(act), _act_kind(out_act)
    if kind is None or out_kind is None:
        raise ValueError(f"jordan_scan: no derivative written for act={act} or out_act={out_act} "
                         "(see jordan_scan_applies)")
    acts = (kind, act, out_kind, out_act)
    if _wants_grad(gx, s0, w_sh, w_ho, b_ho):
        return _JordanScan.apply(gx, s0, w_sh, w_ho, b_ho, mask, reverse, decay, acts)
    _, _, y_buf, _, s_buf = _jordan_forward(gx, s0, w_sh, w_ho, b_ho, mask, reverse, decay, acts, save=False)
    return _batch_first_out(y_buf, mask), s_buf[0 if reverse else gx.shape[0]].clone()
