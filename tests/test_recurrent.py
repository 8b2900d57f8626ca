"""Recurrent cells, layers, encoders, models and sequence tasks: the maths, proven.

- Elman / LSTM / GRU equal torch.nn.RNN / LSTM / GRU (weights copied; multi-layer,
  bidirectional, batch_first or not, padded with lengths, packed) to 1e-5 in fp32,
  on both our native path and our time loop.
- Peephole LSTM and Jordan equal step-by-step references written here from the
  equations (float64), one sequence at a time at its true length.
- Padding never changes results; gradient flows through time; gradcheck in float64;
  truncated BPTT cuts exactly the gradient it should and nothing else.
- The hand-derived back-propagation of scan.py (peephole LSTM, LSTM loop, Jordan)
  equals autograd through the step equations, gradient by gradient, in float64.
"""

import contextlib
import importlib.util
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import blockzoo
from blockzoo import ShapeError
from blockzoo.data.sequence_tasks import adding_problem, copy_memory, copy_memory_baseline
from blockzoo.recurrent import (
    GRU,
    LSTM,
    ElmanCell,
    ElmanRNN,
    GRUCell,
    JordanCell,
    JordanRNN,
    LSTMCell,
    OneHotEncoder,
    TokenEmbedding,
    TrigramEncoder,
    detach_state,
    letter_trigrams,
)
from blockzoo.recurrent.scan import autograd_loop, jordan_scan, jordan_scan_applies, lstm_scan

ROOT = Path(__file__).resolve().parents[1]
LENGTHS = torch.tensor([7, 3, 5, 1])

# (ours, torch reference, constructor kwargs shared by both)
NATIVE = [
    (ElmanRNN, nn.RNN, {}),
    (ElmanRNN, nn.RNN, {"nonlinearity": "relu"}),
    (LSTM, nn.LSTM, {}),
    (GRU, nn.GRU, {}),
]
NATIVE_IDS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def _pair(ours_cls, ref_cls, kw, *, fused, batch_first=True, bias=True, num_layers=2, bidirectional=True):
    ours = ours_cls(5, 6, num_layers, batch_first=batch_first, bias=bias, bidirectional=bidirectional,
                    fused=fused, **kw)
    ref = ref_cls(5, 6, num_layers, batch_first=batch_first, bias=bias, bidirectional=bidirectional, **kw)
    ref.load_state_dict(ours.state_dict())  # same names, same shapes: strict load
    return ours, ref


def _states(s):
    return list(s) if isinstance(s, tuple) else [s]


def _close(a, b, tol=1e-5):
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def _rand_state(ours, batch, dtype=torch.float32):
    ld = ours.num_layers * ours.num_directions
    parts = [torch.randn(ld, batch, ours.out_size, dtype=dtype) for _ in range(ours.state_parts)]
    return parts[0] if len(parts) == 1 else tuple(parts)


# --------------------------------------------------------------------------- torch equality


@pytest.mark.parametrize("fused", [True, False], ids=["native", "loop"])
@pytest.mark.parametrize(("ours_cls", "ref_cls", "kw"), NATIVE, ids=NATIVE_IDS)
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "time_first"])
def test_equals_torch_padded_full_length(ours_cls, ref_cls, kw, fused, batch_first):
    ours, ref = _pair(ours_cls, ref_cls, kw, fused=fused, batch_first=batch_first)
    x = torch.randn(4, 7, 5) if batch_first else torch.randn(7, 4, 5)
    h0 = _rand_state(ours, 4)
    out, s = ours(x, state=h0)
    rout, rs = ref(x, h0)
    _close(out, rout)
    for a, b in zip(_states(s), _states(rs), strict=True):
        _close(a, b)


@pytest.mark.parametrize("fused", [True, False], ids=["native", "loop"])
@pytest.mark.parametrize(("ours_cls", "ref_cls", "kw"), NATIVE, ids=NATIVE_IDS)
def test_equals_torch_lengths_and_packed(ours_cls, ref_cls, kw, fused):
    ours, ref = _pair(ours_cls, ref_cls, kw, fused=fused)
    x = torch.randn(4, 7, 5)
    h0 = _rand_state(ours, 4)
    packed = pack_padded_sequence(x, LENGTHS, batch_first=True, enforce_sorted=False)
    rout, rs = ref(packed, h0)
    rpad, _ = pad_packed_sequence(rout, batch_first=True, total_length=7)
    # (padded, lengths) in, padded out
    out, s = ours(x, LENGTHS, h0)
    _close(out, rpad)
    for a, b in zip(_states(s), _states(rs), strict=True):
        _close(a, b)
    # PackedSequence in, PackedSequence out (same order bookkeeping)
    pout, ps = ours(packed, state=h0)
    assert torch.equal(pout.batch_sizes, rout.batch_sizes)
    assert torch.equal(pout.sorted_indices, rout.sorted_indices)
    _close(pout.data, rout.data)
    for a, b in zip(_states(ps), _states(rs), strict=True):
        _close(a, b)


@pytest.mark.parametrize("fused", [True, False], ids=["native", "loop"])
@pytest.mark.parametrize(("ours_cls", "ref_cls", "kw"), NATIVE, ids=NATIVE_IDS)
def test_equals_torch_sorted_pack_no_bias_unidirectional(ours_cls, ref_cls, kw, fused):
    ours, ref = _pair(ours_cls, ref_cls, kw, fused=fused, bias=False, num_layers=3, bidirectional=False)
    x = torch.randn(4, 7, 5)
    lengths = torch.tensor([7, 5, 3, 1])
    packed = pack_padded_sequence(x, lengths, batch_first=True)  # enforce_sorted: no indices
    pout, ps = ours(packed)
    rout, rs = ref(packed)
    _close(pout.data, rout.data)
    for a, b in zip(_states(ps), _states(rs), strict=True):
        _close(a, b)


@pytest.mark.parametrize(("ours_cls", "ref_cls", "kw"), NATIVE, ids=NATIVE_IDS)
def test_loop_gradients_equal_torch(ours_cls, ref_cls, kw):
    """The time loop's backward (used for peephole/Jordan) equals torch's, parameter by parameter."""
    ours, ref = _pair(ours_cls, ref_cls, kw, fused=False)
    x = torch.randn(4, 7, 5)
    out, _ = ours(x, LENGTHS)
    rout, _ = ref(pack_padded_sequence(x, LENGTHS, batch_first=True, enforce_sorted=False))
    rout, _ = pad_packed_sequence(rout, batch_first=True, total_length=7)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (rout * w).sum().backward()
    rgrads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        _close(p.grad, rgrads[name].grad, tol=1e-4)


def test_loop_weight_gradient_is_stateless_across_backward_calls():
    """The one-product recurrent-weight gradient reads forward values only: repeatable."""
    torch.manual_seed(13)
    ours, ref = _pair(LSTM, nn.LSTM, {}, fused=False)
    x = torch.randn(3, 6, 5, requires_grad=True)
    out, _ = ours(x)
    torch.autograd.grad(out.sum(), x, retain_graph=True)  # a pass that does not want W's gradient
    (g1,) = torch.autograd.grad(out.sum(), ours.weight_hh_l0, retain_graph=True)
    (g2,) = torch.autograd.grad(out.sum(), ours.weight_hh_l0)
    (want,) = torch.autograd.grad(ref(x)[0].sum(), ref.weight_hh_l0)
    _close(g1, want, 1e-4)
    _close(g2, want, 1e-4)


def test_dropout_between_layers_only_in_training():
    torch.manual_seed(0)
    lstm = LSTM(5, 6, 3, dropout=0.5)
    x = torch.randn(2, 4, 5)
    lstm.eval()
    a, _ = lstm(x)
    b, _ = lstm(x)
    assert torch.equal(a, b)
    lstm.train()
    c, _ = lstm(x)
    assert not torch.allclose(a, c)
    one = LSTM(5, 6, 1, dropout=0.5).train()  # one layer: no layer to drop between
    one.eval()
    d, _ = one(x)
    one.train()
    assert torch.equal(d, one(x)[0])


# --------------------------------------------------------------------------- references from the equations


def _sig(z):
    return 1.0 / (1.0 + torch.exp(-z))


def _ref_peephole_seq(p, xs, h, c):
    """One direction of one layer, one sequence, written from Gers et al. 2002."""
    hsz = h.shape[0]
    w_ih, w_hh, b_ih, b_hh, peep = (p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"],
                                    p["weight_peep"])
    wi, wf, wg, wo = w_ih.split(hsz)
    ui, uf, ug, uo = w_hh.split(hsz)
    bi, bf, bg, bo = (b_ih + b_hh).split(hsz)
    w_ci, w_cf, w_co = peep
    ys = []
    for x in xs:
        i = _sig(wi @ x + ui @ h + bi + w_ci * c)
        f = _sig(wf @ x + uf @ h + bf + w_cf * c)
        g = torch.tanh(wg @ x + ug @ h + bg)
        c = f * c + i * g
        o = _sig(wo @ x + uo @ h + bo + w_co * c)
        h = o * torch.tanh(c)
        ys.append(h)
    return ys, (h, c)


def _ref_jordan_seq(p, xs, s, act, out_act, decay):
    """One direction of one layer, one sequence, written from Jordan 1986."""
    ys = []
    for x in xs:
        h = act(p["weight_ih"] @ x + p["bias_ih"] + p["weight_sh"] @ s)
        y = out_act(p["weight_ho"] @ h + p["bias_ho"])
        s = decay * s + y
        ys.append(y)
    return ys, (s,)


def _ref_layered(module, step, x, lengths, state):
    """Run a stacked (bi)directional reference sample by sample on its true length."""
    parts = _states(state)
    d_count = module.num_directions
    outs, finals = [], [[None] * (module.num_layers * d_count) for _ in parts]
    for b in range(x.shape[0]):
        n = int(lengths[b])
        seq = list(x[b, :n])
        for k in range(module.num_layers):
            dir_out = []
            for d in range(d_count):
                i = k * d_count + d
                p = module._params(i)
                inp = seq[::-1] if d else seq
                ys, st = step(p, inp, *[s[i, b] for s in parts])
                dir_out.append(ys[::-1] if d else ys)
                for j, s in enumerate(st):
                    finals[j][i] = (finals[j][i] or []) + [s]
            seq = [torch.cat([o[t] for o in dir_out]) for t in range(n)]
        out = torch.zeros(x.shape[1], len(seq[0]), dtype=x.dtype)
        out[:n] = torch.stack(seq)
        outs.append(out)
    fin = [torch.stack([torch.stack(per_b) for per_b in part]) for part in finals]  # (L*D, B, H)
    return torch.stack(outs), fin


@pytest.mark.parametrize("packed", [False, True], ids=["lengths", "packed"])
def test_peephole_lstm_equals_reference(packed):
    torch.manual_seed(1)
    lstm = blockzoo.create("peephole_lstm", input_size=5, hidden_size=6, num_layers=2,
                           bidirectional=True).double()
    x = torch.randn(4, 7, 5, dtype=torch.float64)
    h0 = _rand_state(lstm, 4, torch.float64)
    want, want_state = _ref_layered(lstm, _ref_peephole_seq, x, LENGTHS, h0)
    if packed:
        p = pack_padded_sequence(x, LENGTHS, batch_first=True, enforce_sorted=False)
        out, st = lstm(p, state=h0)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=7)
    else:
        out, st = lstm(x, LENGTHS, h0)
    _close(out, want, 1e-10)
    for a, b in zip(_states(st), want_state, strict=True):
        _close(a, b, 1e-10)


def test_peephole_matters_and_zero_peepholes_give_plain_lstm():
    torch.manual_seed(2)
    peep = LSTM(5, 6, 2, peephole=True)
    plain = LSTM(5, 6, 2)
    plain.load_state_dict({k: v for k, v in peep.state_dict().items() if "peep" not in k})
    x = torch.randn(3, 6, 5)
    assert not torch.allclose(peep(x)[0], plain(x)[0], atol=1e-4)
    with torch.no_grad():
        for n, p in peep.named_parameters():
            if "peep" in n:
                p.zero_()
    _close(peep(x)[0], plain(x)[0])


@pytest.mark.parametrize("decay", [0.0, 0.5])
def test_jordan_equals_reference(decay):
    torch.manual_seed(3)
    jordan = JordanRNN(5, 6, 2, output_size=4, bidirectional=True, state_decay=decay,
                       out_act_layer="sigmoid").double()

    def step(p, xs, s):
        return _ref_jordan_seq(p, xs, s, torch.tanh, _sig, decay)

    x = torch.randn(4, 7, 5, dtype=torch.float64)
    s0 = _rand_state(jordan, 4, torch.float64)
    want, (want_s,) = _ref_layered(jordan, step, x, LENGTHS, s0)
    out, s = jordan(x, LENGTHS, s0)
    _close(out, want, 1e-10)
    _close(s, want_s, 1e-10)


@pytest.mark.parametrize("name", ["peephole", "jordan"])
def test_loop_parameter_gradients_equal_reference(name):
    """Every parameter's gradient through our loop equals autograd through the reference."""
    torch.manual_seed(15)
    if name == "peephole":
        layer = LSTM(3, 4, 2, bidirectional=True, peephole=True).double()
        step = _ref_peephole_seq
    else:
        layer = JordanRNN(3, 4, 2, bidirectional=True, output_size=2, state_decay=0.3).double()

        def step(p, xs, s):
            return _ref_jordan_seq(p, xs, s, torch.tanh, torch.tanh, 0.3)

    x = torch.randn(3, 5, 3, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 4])
    h0 = _rand_state(layer, 3, torch.float64)
    w_out = torch.randn(3, 5, layer.num_directions * layer.out_size, dtype=torch.float64)

    def loss(out, st):
        parts = st if isinstance(st, list) else _states(st)
        return (out * w_out).sum() + sum((s * s).sum() for s in parts)

    loss(*layer(x, lengths, h0)).backward()
    ours = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad()
    loss(*_ref_layered(layer, step, x, lengths, h0)).backward()
    for n, p in layer.named_parameters():
        _close(ours[n], p.grad, 1e-10)


# --------------------------------------------------------------------------- hand-derived BPTT (scan.py)

# (layer factory, whether the run uses lengths); every config runs on the scans of scan.py
SCAN_CASES = {
    "peephole_bidir_lengths": (lambda: LSTM(3, 4, 2, bidirectional=True, peephole=True), True),
    "peephole_no_bias": (lambda: LSTM(3, 4, 2, peephole=True, bias=False), False),
    "peephole_time_first": (lambda: LSTM(3, 4, 1, peephole=True, batch_first=False, bidirectional=True),
                            True),
    "lstm_loop_lengths": (lambda: LSTM(3, 4, 2, bidirectional=True, fused=False), True),
    "jordan_decay_lengths": (lambda: JordanRNN(3, 4, 2, bidirectional=True, output_size=2, state_decay=0.3),
                             True),
    "jordan_sigmoid_relu_no_bias": (lambda: JordanRNN(3, 4, 2, output_size=3, act_layer="sigmoid",
                                                      out_act_layer="relu", bias=False), True),
    "jordan_gelu_identity": (lambda: JordanRNN(3, 4, 2, bidirectional=True, output_size=2, act_layer="gelu",
                                               out_act_layer="identity", state_decay=0.5), True),
    "jordan_relu_tanh": (lambda: JordanRNN(3, 4, 1, output_size=2, act_layer="relu", state_decay=0.2), False),
}


def _graph_names(t):
    """Names of the autograd nodes behind t."""
    seen, todo, names = set(), [t.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        todo.extend(f for f, _ in fn.next_functions)
    return names


def _all_grads(layer, x, lengths, state, weights):
    """Output, final state and the gradient of a loss on both w.r.t. input, state and every parameter."""
    layer.zero_grad()
    x = x.clone().requires_grad_()
    parts = [s.clone().requires_grad_() for s in _states(state)]
    out, st = layer(x, lengths, parts[0] if len(parts) == 1 else tuple(parts))
    finals = _states(st)
    loss = (out * weights).sum() + sum((f * torch.randn_like(f, dtype=f.dtype).abs()).sum() for f in finals)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    grads["input"] = x.grad
    grads.update({f"state{j}": p.grad for j, p in enumerate(parts)})
    return out, finals, grads, _graph_names(out)


@pytest.mark.parametrize("case", list(SCAN_CASES))
def test_scan_gradients_equal_autograd_loop(case):
    """The hand-derived backward equals autograd through the step equations, every gradient, to 1e-10."""
    make, use_lengths = SCAN_CASES[case]
    torch.manual_seed(16)
    layer = make().double()
    lengths = torch.tensor([5, 2, 4]) if use_lengths else None
    x = torch.randn(3, 5, 3, dtype=torch.float64) * 2
    if not layer.batch_first:
        x = x.transpose(0, 1).contiguous()  # (T, B, F)
    state = _rand_state(layer, 3, torch.float64)
    w_out = torch.randn(*x.shape[:2], layer.num_directions * layer.out_size, dtype=torch.float64)
    torch.manual_seed(17)
    out, finals, grads, names = _all_grads(layer, x, lengths, state, w_out)
    torch.manual_seed(17)
    with autograd_loop():
        ref_out, ref_finals, ref_grads, ref_names = _all_grads(layer, x, lengths, state, w_out)
    scan_node = "_JordanScanBackward" if isinstance(layer, JordanRNN) else "_LSTMScanBackward"
    assert scan_node in names and scan_node not in ref_names  # two different backward passes compared
    _close(out, ref_out, 1e-10)
    for a, b in zip(finals, ref_finals, strict=True):
        _close(a, b, 1e-10)
    assert set(grads) == set(ref_grads)
    for n in grads:
        assert ref_grads[n].abs().sum() > 0, n  # every gradient is exercised
        _close(grads[n], ref_grads[n], 1e-10)
    # without gradients the same loop runs without saving: the same numbers
    with torch.no_grad():
        again, st = layer(x, lengths, state)
    _close(again, out, 1e-12)
    for a, b in zip(_states(st), finals, strict=True):
        _close(a, b, 1e-12)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("peephole", [True, False], ids=["peephole", "plain"])
def test_lstm_scan_gradcheck(reverse, peephole):
    torch.manual_seed(18)
    t, b, h = 4, 3, 2
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)  # lengths 4, 2, 3
    args = [torch.randn(t, b, 4 * h), torch.randn(b, h), torch.randn(b, h), torch.randn(4 * h, h)]
    args = [a.double().requires_grad_() for a in args]
    peep = torch.randn(3, h, dtype=torch.float64, requires_grad=True) if peephole else None

    def f(gx, h0, c0, w_hh, *rest):
        out, (hn, cn) = lstm_scan(gx, h0, c0, w_hh, rest[0] if rest else None, mask, reverse)
        return out, hn, cn

    assert torch.autograd.gradcheck(f, (*args, *([peep] if peephole else [])))


@pytest.mark.parametrize("acts", [("tanh", "tanh"), ("sigmoid", "identity"), ("silu", "softplus")])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_jordan_scan_gradcheck(acts, reverse):
    torch.manual_seed(19)
    t, b, h, o = 4, 3, 3, 2
    act, out_act = (blockzoo.act.create_act(a) for a in acts)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    args = [torch.randn(t, b, h), torch.randn(b, o), torch.randn(h, o), torch.randn(o, h), torch.randn(o)]
    args = [a.double().requires_grad_() for a in args]

    def f(gx, s0, w_sh, w_ho, b_ho):
        return jordan_scan(gx, s0, w_sh, w_ho, b_ho, mask, reverse, 0.4, act, out_act)

    assert torch.autograd.gradcheck(f, tuple(args))


def test_scan_repeated_backward_with_retained_graph():
    """The backward reads the saved buffers without changing them: a second backward agrees."""
    torch.manual_seed(20)
    for layer in (LSTM(3, 4, peephole=True), JordanRNN(3, 4, output_size=2, state_decay=0.5)):
        x = torch.randn(2, 6, 3, requires_grad=True)
        out, _ = layer(x, torch.tensor([6, 4]))
        g1 = torch.autograd.grad(out.sum(), [x, *layer.parameters()], retain_graph=True)
        g2 = torch.autograd.grad(out.sum(), [x, *layer.parameters()])
        for a, b in zip(g1, g2, strict=True):
            assert torch.equal(a, b)


def test_scan_frozen_weights_get_no_gradient_others_unchanged():
    """Weights that need no gradient get none; the others equal the autograd loop's."""
    torch.manual_seed(22)
    for layer in (LSTM(3, 4, peephole=True).double(), JordanRNN(3, 4, output_size=2).double()):
        for n, p in layer.named_parameters():
            p.requires_grad_(n.split("_l")[0] not in ("weight_hh", "weight_peep", "weight_ho", "bias_ho"))
        x = torch.randn(2, 5, 3, dtype=torch.float64)
        grads = []
        for ctx in (contextlib.nullcontext(), autograd_loop()):
            layer.zero_grad()
            with ctx:
                out, _ = layer(x, torch.tensor([5, 3]))
            out.sum().backward()
            grads.append({n: p.grad for n, p in layer.named_parameters()})
        for n, p in layer.named_parameters():
            if p.requires_grad:
                _close(grads[0][n], grads[1][n], 1e-10)
            else:
                assert grads[0][n] is None


def test_jordan_falls_back_to_autograd_loop_where_the_scan_cannot():
    """PReLU (a parameter of its own) has no derivative in scan.py; autocast runs bf16 products."""
    torch.manual_seed(21)
    prelu = JordanRNN(3, 4, output_size=2, act_layer="prelu")
    assert not jordan_scan_applies(prelu.act, prelu.out_act)
    out, _ = prelu(torch.randn(2, 5, 3), torch.tensor([5, 3]))
    assert "_JordanScanBackward" not in _graph_names(out)
    out.sum().backward()
    assert prelu.act.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="jordan_scan"):
        jordan_scan(torch.randn(5, 2, 4), torch.zeros(2, 2), prelu.weight_sh_l0, prelu.weight_ho_l0, None,
                    None, False, 0.0, prelu.act, prelu.out_act)
    peep = LSTM(3, 4, peephole=True)
    x = torch.randn(2, 5, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, _ = peep(x)
    assert "_LSTMScanBackward" not in _graph_names(low)
    _close(low.float(), peep(x)[0], 2e-2)


def test_jordan_feeds_back_output_not_hidden():
    """Changing W_ho changes later hidden activity only through the fed-back output."""
    torch.manual_seed(4)
    cell = JordanCell(3, 5, 2).double()
    x = torch.randn(1, 3, dtype=torch.float64)
    y1, s1 = cell(x)
    assert torch.allclose(s1, y1)  # decay 0: the state units hold y_{t-1}
    p = dict(cell.named_parameters())
    h = torch.tanh(p["weight_ih"] @ x[0] + p["bias_ih"] + p["weight_sh"] @ s1[0])
    y2, _ = cell(x, s1)
    _close(y2[0], torch.tanh(p["weight_ho"] @ h + p["bias_ho"]), 1e-12)


# --------------------------------------------------------------------------- cells


@pytest.mark.parametrize(("ours_cls", "ref_cls", "kw"), [
    (ElmanCell, nn.RNNCell, {}), (ElmanCell, nn.RNNCell, {"nonlinearity": "relu"}),
    (LSTMCell, nn.LSTMCell, {}), (GRUCell, nn.GRUCell, {}),
], ids=["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_cells_equal_torch_and_all_grads_flow(ours_cls, ref_cls, kw):
    ours = ours_cls(5, 6, **kw)
    ref = ref_cls(5, 6, **kw)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 5)
    state = (torch.randn(3, 6), torch.randn(3, 6)) if ours_cls is LSTMCell else torch.randn(3, 6)
    got, want = ours(x, state), ref(x, state)
    for a, b in zip(_states(got), _states(want), strict=True):
        _close(a, b)
    sum((g * torch.randn_like(g)).sum() for g in _states(got)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ours.parameters())


def test_peephole_cell_equals_reference_and_layer_step():
    torch.manual_seed(5)
    cell = blockzoo.create("peephole_lstm_cell", input_size=5, hidden_size=6).double()
    x = torch.randn(2, 5, dtype=torch.float64)
    h, c = torch.randn(2, 6, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    got_h, got_c = cell(x, (h, c))
    p = dict(cell.named_parameters())
    for b in range(2):
        _, (wh, wc) = _ref_peephole_seq(p, [x[b]], h[b], c[b])
        _close(got_h[b], wh, 1e-12)
        _close(got_c[b], wc, 1e-12)
    (got_h.sum() + got_c.sum()).backward()
    assert all(q.grad.abs().sum() > 0 for q in cell.parameters())


# --------------------------------------------------------------------------- properties

LAYERS = {
    "elman": lambda: ElmanRNN(4, 5, 2, bidirectional=True),
    "lstm": lambda: LSTM(4, 5, 2, bidirectional=True),
    "peephole": lambda: LSTM(4, 5, 2, bidirectional=True, peephole=True),
    "gru": lambda: GRU(4, 5, 2, bidirectional=True),
    "jordan": lambda: JordanRNN(4, 5, 2, bidirectional=True, output_size=3),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_padding_never_changes_results(name):
    """A sequence alone equals the same sequence padded (with garbage) in a batch."""
    torch.manual_seed(6)
    layer = LAYERS[name]().eval()
    x = torch.randn(4, 7, 4) * 3  # garbage in the padded steps, deliberately not zero
    out, st = layer(x, LENGTHS)
    for b in range(4):
        n = int(LENGTHS[b])
        alone, st_alone = layer(x[b : b + 1, :n])
        _close(out[b : b + 1, :n], alone)
        assert not out[b, n:].any()  # padded steps output zeros
        for a, s in zip(_states(st), _states(st_alone), strict=True):
            _close(a[:, b : b + 1], s)


@pytest.mark.parametrize("name", list(LAYERS))
def test_gradient_flows_through_time(name):
    torch.manual_seed(7)
    layer = LAYERS[name]()
    x = torch.randn(2, 9, 4, requires_grad=True)
    out, _ = layer(x)
    # the forward direction's last output depends on the first input
    (g,) = torch.autograd.grad(out[:, -1, : out.shape[-1] // 2].sum(), x, retain_graph=True)
    assert g[:, 0].abs().sum() > 0
    # and the reverse direction's first output on the last input
    (g,) = torch.autograd.grad(out[:, 0, out.shape[-1] // 2 :].sum(), x)
    assert g[:, -1].abs().sum() > 0


@pytest.mark.parametrize("name", ["lstm", "peephole", "gru", "jordan"])
def test_gradcheck_float64_with_lengths(name):
    torch.manual_seed(8)
    small = {
        "lstm": lambda: LSTM(2, 3, 2, bidirectional=True),
        "peephole": lambda: LSTM(2, 3, 2, bidirectional=True, peephole=True),
        "gru": lambda: GRU(2, 3, 2, bidirectional=True),
        "jordan": lambda: JordanRNN(2, 3, 2, bidirectional=True, output_size=2, state_decay=0.3),
    }[name]().double()
    x = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    h0 = _rand_state(small, 3, torch.float64)
    h0 = tuple(h.requires_grad_() for h in _states(h0))
    lengths = torch.tensor([4, 2, 3])

    def f(x, *h):
        out, st = small(x, lengths, h if len(h) == 2 else h[0])
        return (out, *_states(st))

    assert torch.autograd.gradcheck(f, (x, *h0))


# --------------------------------------------------------------------------- truncated BPTT


@pytest.mark.parametrize("name", ["lstm", "peephole", "gru", "jordan"])
def test_tbptt_same_values_truncated_gradient(name):
    torch.manual_seed(9)
    make = {
        "lstm": lambda **k: LSTM(3, 4, 2, **k),
        "peephole": lambda **k: LSTM(3, 4, 2, peephole=True, **k),
        "gru": lambda **k: GRU(3, 4, 2, **k),
        "jordan": lambda **k: JordanRNN(3, 4, 2, **k),
    }[name]
    full = make()
    trunc = make(tbptt=3)
    trunc.load_state_dict(full.state_dict())
    x = torch.randn(4, 8, 3, requires_grad=True)
    lengths = torch.tensor([8, 2, 5, 7])
    a, sa = full(x, lengths)
    b, sb = trunc(x, lengths)
    _close(a, b)
    for p, q in zip(_states(sa), _states(sb), strict=True):
        _close(p, q)
    # the last output of sample 0 (t = 7, chunk [6, 8)): gradient reaches t = 6 only
    (g_full,) = torch.autograd.grad(a[0, 7].sum(), x, retain_graph=True)
    (g_trunc,) = torch.autograd.grad(b[0, 7].sum(), x, retain_graph=True)
    assert g_full[0, :6].abs().sum() > 0
    assert not g_trunc[0, :6].any()
    _close(g_trunc[0, 6:], g_full[0, 6:])  # inside the chunk: same gradient
    # the final state carries its last chunk's graph (a many-to-one head still trains)
    h_last = _states(sb)[0][-1, 0].sum()
    (g_state,) = torch.autograd.grad(h_last, x)
    assert g_state[0, 6:].abs().sum() > 0 and not g_state[0, :6].any()


@pytest.mark.parametrize("fused", [True, False], ids=["native", "loop"])
def test_tbptt_packed_and_time_first_inputs(fused):
    torch.manual_seed(14)
    full = GRU(3, 4, 2, batch_first=False, fused=fused)
    trunc = GRU(3, 4, 2, batch_first=False, fused=fused, tbptt=2)
    trunc.load_state_dict(full.state_dict())
    x = torch.randn(7, 4, 3)  # (T, B, F)
    lengths = torch.tensor([7, 3, 5, 1])
    _close(trunc(x)[0], full(x)[0])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    (a, sa), (b, sb) = full(packed), trunc(packed)
    assert torch.equal(a.batch_sizes, b.batch_sizes)
    _close(b.data, a.data)
    _close(sb, sa)


def test_stream_in_chunks_with_carried_state_equals_whole():
    torch.manual_seed(10)
    lstm = LSTM(3, 4, 2)
    x = torch.randn(2, 10, 3)
    whole, s_whole = lstm(x)
    state, parts = None, []
    for chunk in x.split(4, dim=1):
        out, state = lstm(chunk, state=state)
        state = detach_state(state)
        parts.append(out)
    _close(torch.cat(parts, 1), whole)
    for a, b in zip(state, s_whole, strict=True):
        _close(a, b)


# --------------------------------------------------------------------------- errors


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="tbptt"):
        LSTM(3, 4, bidirectional=True, tbptt=5)
    with pytest.raises(ValueError, match="fused"):
        LSTM(3, 4, peephole=True, fused=True)
    with pytest.raises(ValueError, match="nonlinearity"):
        ElmanRNN(3, 4, nonlinearity="sigmoid")
    lstm = LSTM(3, 4, 2)
    x = torch.randn(2, 5, 3)
    with pytest.raises(ShapeError, match="LSTM"):
        lstm(x, torch.tensor([5, 6]))  # longer than T
    with pytest.raises(ShapeError, match="LSTM"):
        lstm(x, torch.tensor([5, 0]))
    with pytest.raises(ShapeError, match="LSTM"):
        lstm(x, torch.tensor([5.0, 2.0]))
    with pytest.raises(ShapeError, match="LSTM"):
        lstm(x, state=(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))  # L*D = 2
    with pytest.raises(ShapeError, match="LSTM"):
        lstm(x, state=torch.zeros(2, 2, 4))  # an LSTM's state is (h, c)


@pytest.mark.parametrize("name", ["elman_rnn", "lstm", "peephole_lstm", "gru", "jordan_rnn"])
def test_out_size_is_not_an_argument(name):
    """``out_size`` was accepted and crashed in the first forward; only Jordan has an output size
    (``output_size``), so every layer refuses ``out_size`` at construction."""
    with pytest.raises(TypeError, match="out_size"):
        blockzoo.create(name, input_size=3, hidden_size=4, out_size=7)
    with pytest.raises(TypeError, match="hiden_size"):
        blockzoo.create(name, input_size=3, hidden_size=4, hiden_size=7)  # any unknown argument
    jordan = JordanRNN(3, 4, output_size=2)
    out, s = jordan(torch.randn(2, 5, 3))
    assert jordan.out_size == 2 and out.shape == (2, 5, 2) and s.shape == (1, 2, 2)


# --------------------------------------------------------------------------- encoders


def test_letter_trigrams_of_bool():
    assert letter_trigrams("bool") == ["#bo", "boo", "ool", "ol#"]
    assert letter_trigrams("a") == ["#a#"]


def test_trigram_encoder_counts_and_other():
    enc = TrigramEncoder.from_words(["bool", "boot"])
    assert enc.keys == sorted({"#bo", "boo", "ool", "ol#", "oot", "ot#"})
    x, lengths = enc([["bool", "Boot"], ["cool"]])
    assert x.shape == (2, 2, len(enc.keys) + 1) and lengths.tolist() == [2, 1]
    bool_vec = dict(zip([*enc.keys, "other"], x[0, 0].tolist(), strict=True))
    assert bool_vec == {"#bo": 1, "boo": 1, "ool": 1, "ol#": 1, "oot": 0, "ot#": 0, "other": 0}
    # "cool" -> #co (unknown), coo (unknown), ool, ol#
    cool = dict(zip([*enc.keys, "other"], x[1, 0].tolist(), strict=True))
    assert cool["ool"] == 1 and cool["ol#"] == 1 and cool["other"] == 2
    assert not x[1, 1].any()  # padding


def test_one_hot_encoder_oov_goes_to_other():
    enc = OneHotEncoder(["book", "a", "flight", "a"])
    assert enc.num_features == 4
    x, lengths = enc([["Book", "a", "taxi"], ["flight"]])
    assert lengths.tolist() == [3, 1]
    assert x[0].argmax(-1).tolist() == [0, 1, 3]  # taxi -> other (index N = 3)
    assert torch.equal(x.sum(-1), torch.tensor([[1.0, 1, 1], [1, 0, 0]]))


def test_token_embedding_padding():
    emb = TokenEmbedding(10, 4, padding_idx=0)
    ids = torch.tensor([[3, 4, 0], [5, 0, 0]])
    e = emb(ids)
    assert not e[0, 2].any() and not e[1, 1:].any()
    assert emb.lengths(ids).tolist() == [2, 1]
    e.sum().backward()
    assert not emb.embed.weight.grad[0].any()


# --------------------------------------------------------------------------- models


def test_classifier_token_ids_padding_invariant_and_create_model():
    torch.manual_seed(11)
    model = blockzoo.create_model("gru_classifier", num_classes=3, input_size=None, vocab_size=12,
                                  embed_dim=5, hidden_size=6, bidirectional=True).eval()
    ids = torch.tensor([[4, 5, 6, 0, 0], [7, 8, 9, 10, 11]])
    both = model(ids)  # lengths from the padding id
    _close(both[0:1], model(ids[0:1, :3]))
    m = blockzoo.create_model("lstm_classifier", num_classes=1, in_chans=7)
    assert m.input_size == 7 and m(torch.randn(2, 4, 7)).shape == (2, 1)
    tagger = blockzoo.create_model("lstm_tagger", num_classes=5, in_chans=3)
    assert tagger(torch.randn(2, 6, 3), torch.tensor([6, 2])).shape == (2, 6, 5)


def test_sequence_models_default_directions_and_override():
    """One constructor: the classifier defaults to one direction, the tagger to two."""
    from blockzoo.models.sequence import RNNClassifier, RNNTagger

    assert RNNClassifier(3, 2, hidden_size=4).rnn.num_directions == 1
    assert RNNTagger(3, 2, hidden_size=4).rnn.num_directions == 2
    assert RNNClassifier(3, 2, hidden_size=4, bidirectional=True).rnn.num_directions == 2
    assert RNNTagger(3, 2, hidden_size=4, bidirectional=False).rnn.num_directions == 1
    with pytest.raises(TypeError, match="hiden_size"):
        RNNTagger(3, 2, hiden_size=4)


def test_classifier_uses_final_state_at_true_last_step():
    torch.manual_seed(12)
    model = blockzoo.create_model("rnn_classifier", num_classes=2, in_chans=3).eval()
    x = torch.randn(2, 6, 3)
    lengths = torch.tensor([6, 3])
    _close(model(x, lengths)[1:], model(x[1:, :3]))


# --------------------------------------------------------------------------- data


def test_adding_problem():
    x, y = adding_problem(500, 50, seed=3)
    x2, y2 = adding_problem(500, 50, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == (500, 50, 2) and y.shape == (500,)
    marks = x[..., 1]
    assert torch.equal(marks.sum(1), torch.full((500,), 2.0))
    assert torch.equal(marks[:, :25].sum(1), torch.ones(500))  # one marker per half
    _close(y, (x[..., 0] * marks).sum(1))
    assert abs(((y - 1) ** 2).mean().item() - 1 / 6) < 0.03


def test_copy_memory():
    x, y = copy_memory(4, 20, seed=0)
    assert x.shape == y.shape == (4, 40)
    assert torch.equal(y[:, -10:], x[:, :10]) and not y[:, :30].any()
    assert (x[:, :10] >= 1).all() and (x[:, :10] <= 8).all()
    assert (x[:, 29] == 9).all() and not x[:, 10:29].any() and not x[:, 30:].any()
    assert math.isclose(copy_memory_baseline(20), 10 * math.log(8) / 40)


# --------------------------------------------------------------------------- examples


def _load_example(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_example_lstm_adding_problem_quick():
    results = _load_example("lstm_adding_problem").main(["--quick"])
    assert set(results) == {"lstm", "gru"}
    assert all(math.isfinite(v) for v in results.values())


def test_example_slot_filling_quick():
    results = _load_example("slot_filling").main(["--quick"])
    assert 0.0 <= results["token_accuracy"] <= 1.0
