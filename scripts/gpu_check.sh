#!/usr/bin/env bash
# blockzoo on a CUDA machine, in one go (make test-cuda). Each part prints one summary
# line; the script exits non-zero if any part failed. Budget: well under 10 minutes on
# one GPU once torch is installed.
#
#   scripts/gpu_check.sh                 # uses .venv (made with the Makefile's TORCH_SPEC)
#   PYTHON=/usr/bin/python3 scripts/gpu_check.sh   # an interpreter that already has CUDA torch
#   TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" make test-cuda
#
# Parts: (1) the conformance of every registry entry on cuda in fp32 and under bf16
# autocast, the fused SDPA kernels, cuDNN for the recurrent layers, inductor on one entry
# per family (pytest -m cuda); (2) the default `blockzoo train` on cuda with bf16 autocast
# within 1 point of the CPU run; (3) DDP: 2 processes, NCCL when 2+ GPUs, else gloo on CPU;
# (4) `blockzoo bench --device cuda` for every family -> docs/benchmarks_cuda.md.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-$(mktemp -d)}
fail=0
line() { printf '%-10s %s\n' "$1" "$2"; }

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  line setup "FAILED: $PY has no CUDA-enabled torch (torch.cuda.is_available() is False)"
  exit 2
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'x', torch.cuda.device_count())"

# (1) registry on CUDA
if "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py >"$OUT/cuda_tests.log" 2>&1; then
  line cuda-tests "ok: $(tail -n 1 "$OUT/cuda_tests.log")"
else
  line cuda-tests "FAILED: $(tail -n 1 "$OUT/cuda_tests.log") (log: $OUT/cuda_tests.log)"; fail=1
fi

# (2) the default training job: CPU vs CUDA + bf16, same seed and recipe
train() { "$PY" -m blockzoo train --quiet --no-plots --runs-dir "$OUT/runs" --name "$1" "${@:2}" 2>&1 | tail -n 40; }
acc() { sed -n 's/^test accuracy *\([0-9.]*\)%.*/\1/p' | head -n 1; }
cpu_acc=$(train cpu --device cpu | acc)
gpu_acc=$(train gpu --device cuda --amp bf16 | acc)
if [ -n "$cpu_acc" ] && [ -n "$gpu_acc" ] && "$PY" -c "import sys; sys.exit(0 if abs($cpu_acc - $gpu_acc) <= 1.0 else 1)"; then
  line train "ok: test accuracy cpu $cpu_acc% vs cuda+bf16 $gpu_acc% (within 1 point)"
else
  line train "FAILED: test accuracy cpu '${cpu_acc}' vs cuda+bf16 '${gpu_acc}'"; fail=1
fi

# (3) DDP
ngpu=$("$PY" -c "import torch; print(torch.cuda.device_count())")
ddp_args=(--device cuda)
if [ "$ngpu" -ge 2 ]; then what="NCCL, one GPU each"; else what="gloo, both on the one GPU"; fi
if "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 -m blockzoo train --quick --epochs 1 \
    --quiet --no-plots --runs-dir "$OUT/runs" --name ddp "${ddp_args[@]}" >"$OUT/ddp.log" 2>&1; then
  line ddp "ok: 2 processes, $what"
else
  line ddp "FAILED: 2 processes, $what (log: $OUT/ddp.log)"; fail=1
fi

# (4) bench every family on CUDA -> docs/benchmarks_cuda.md
page=docs/benchmarks_cuda.md
{
  echo "# Benchmarks on CUDA"
  echo
  echo "Written by \`scripts/gpu_check.sh\` (\`make test-cuda\`) on $(date -u +%Y-%m-%d):"
  echo "\`blockzoo bench --device cuda --family F --format markdown\` for every family, fp32 and bf16;"
  echo "times by CUDA events (median of 10 after 3 warm-up runs), memory by max_memory_allocated,"
  echo "% of peak against the same run's measured dense matmul at that dtype."
  echo
  "$PY" -c "import torch; print('-', torch.cuda.get_device_name(0) + ',', 'torch', torch.__version__ + ',', 'CUDA', torch.version.cuda)"
} > "$page.tmp"
bench_ok=1
for dtype in fp32 bf16; do
  for fam in attention mlp rep conv recurrent model; do
    echo -e "\n## $fam, $dtype\n" >> "$page.tmp"
    if ! "$PY" -m blockzoo bench --family "$fam" --device cuda --dtype "$dtype" --no-progress \
        --format markdown >> "$page.tmp" 2>>"$OUT/bench.log"; then bench_ok=0; fi
  done
done
mv "$page.tmp" "$page"
if [ "$bench_ok" = 1 ]; then line bench "ok: wrote $page"; else line bench "FAILED: some families (see $page, $OUT/bench.log)"; fail=1; fi

exit $fail
