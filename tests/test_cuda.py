"""The registry, the attention kernels and the recurrent layers on CUDA (marker ``cuda``).

Every test here skips on a machine without a CUDA device, saying so. On one,
``scripts/gpu_check.sh`` (``make test-cuda``) runs them together with training, DDP,
benchmark and compile checks. Tolerances are stated beside each comparison: fp32 on
the GPU is compared with the CPU with TF32 switched off; bf16 autocast against fp32
by relative error of the whole output.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import blockzoo
from blockzoo.registry import list_blocks, spec

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="no CUDA device here (scripts/gpu_check.sh runs these on a GPU machine)"),
]

ENTRIES = list_blocks()
# fp32 on the GPU vs the CPU: different kernels, same maths (TF32 off)
FP32_RTOL, FP32_ATOL = 1e-4, 1e-5
# bf16 autocast vs fp32 on the GPU: relative error of the output's norm (8 mantissa bits)
BF16_REL = 5e-2


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _floats(out) -> list[torch.Tensor]:
    leaves = torch.utils._pytree.tree_leaves(out)
    return [t for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()]


@pytest.mark.parametrize("name", ENTRIES)
def test_forward_backward_on_cuda_equals_cpu_fp32(name: str) -> None:
    s = spec(name)
    torch.manual_seed(0)
    cpu = s.build_example().eval()
    gpu = s.build_example().eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu.cuda()
    args = s.make_input(batch=2, seed=1)
    with torch.no_grad():
        want = _floats(cpu(*args))
        got = _floats(gpu(*[a.cuda() if isinstance(a, torch.Tensor) else a for a in args]))
    for w, g in zip(want, got, strict=True):
        torch.testing.assert_close(g.cpu(), w, rtol=FP32_RTOL, atol=FP32_ATOL)
    gpu.train()
    out = _floats(gpu(*[a.cuda() if isinstance(a, torch.Tensor) else a for a in args]))
    sum(o.float().square().mean() for o in out).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in gpu.parameters())


@pytest.mark.parametrize("name", ENTRIES)
def test_bf16_autocast_on_cuda_is_close_to_fp32(name: str) -> None:
    s = spec(name)
    torch.manual_seed(0)
    model = s.build_example().eval().cuda()
    args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in s.make_input(batch=2, seed=1)]
    with torch.no_grad():
        want = _floats(model(*args))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = _floats(model(*args))
    for w, g in zip(want, got, strict=True):
        assert torch.isfinite(g).all()
        rel = (g.float() - w).norm() / w.norm().clamp_min(1e-12)
        assert rel <= BF16_REL, f"{name}: bf16 relative error {rel:.3g} > {BF16_REL}"


@pytest.mark.parametrize("name", ["multi_head_attention", "transformer_encoder_block", "vit_tiny"])
def test_attention_runs_on_the_fused_sdpa_kernels(name: str) -> None:
    """Restricted to flash / memory-efficient SDPA, the forward must still run: it uses them."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if name not in ENTRIES:
        pytest.skip(f"{name} is not registered")
    s = spec(name)
    model = s.build_example().eval().cuda().to(torch.bfloat16)
    args = [a.cuda().to(torch.bfloat16) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in s.make_input(batch=2, seed=1)]
    with torch.no_grad(), sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        out = _floats(model(*args))
    assert all(torch.isfinite(o).all() for o in out)


@pytest.mark.parametrize("name", ["lstm", "gru", "elman_rnn"])
def test_recurrent_layers_use_cudnn_where_torch_does(name: str) -> None:
    s = spec(name)
    model = s.build_example().cuda()
    x = s.make_input(batch=4, seed=1)[0].cuda()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(x)
    ops = {e.name for e in prof.events()}
    assert any("cudnn_rnn" in op for op in ops), sorted(op for op in ops if op.startswith("aten::"))[:20]


@pytest.mark.parametrize("family", ["attention", "mlp", "rep", "conv", "recurrent", "model"])
def test_inductor_compiles_one_entry_per_family(family: str) -> None:
    name = next(n for n in list_blocks(family=family) if "compile" not in spec(n).exempt)
    s = spec(name)
    torch.manual_seed(0)
    model = s.build_example().eval().cuda()
    args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in s.make_input(batch=2, seed=1)]
    with torch.no_grad():
        want = _floats(model(*args))
        got = _floats(torch.compile(model, backend="inductor")(*args))
    for w, g in zip(want, got, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-4)  # fused kernels reorder sums


def test_training_step_on_cuda_moves_every_parameter() -> None:
    model = blockzoo.create_model("mnist1d_cnn", num_classes=10, in_chans=1).cuda()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(8, 40, 1, device="cuda"), torch.randint(0, 10, (8,), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(model(x).float(), y)
    loss.backward()
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
