#!/usr/bin/env bash
# All GPU verification in one command, for a machine with a CUDA GPU and no
# network, whose Python already has torch (+ triton):
#
#   bash benchmarks/gpu_check.sh [OUTDIR]       # default benchmarks/results/gpu
#
# Builds tcl_fast against the torch there (--no-build-isolation), runs the
# CUDA/Triton tests, then the LIF and supervised-contrastive benchmarks, and
# leaves logs + JSON in OUTDIR. Wheels placed in ./.whl (e.g. spikingjelly for
# side-by-side numbers) are installed first, offline.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results/gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
status=0
{
  date -u; nvidia-smi || true
  python -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  python -c "import triton; print('triton', triton.__version__)" || true
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"
if ls .whl/*.whl >/dev/null 2>&1; then
  python -m pip install -q --no-index --no-deps --target /tmp/tcl_fast_site .whl/*.whl && export PYTHONPATH=/tmp/tcl_fast_site:${PYTHONPATH:-}
fi
MAX_JOBS=${MAX_JOBS:-16} python -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
  || { echo "build failed, see $OUT/build.log"; tail -40 "$OUT/build.log"; exit 1; }
python -c "from tcl_fast import _extension as e; assert e.has_cuda_kernels(), 'no CUDA kernels'; print('CUDA kernels: ok')" || status=1
python -m pytest tests/ops tests/losses tests/test_build.py -q -rs 2>&1 | tee "$OUT/tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
python benchmarks/bench_lif.py --out "$OUT/lif_cuda.json" 2>&1 | tee "$OUT/bench_lif.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
python benchmarks/bench_supcon.py --device cuda --out "$OUT/supcon_cuda.json" 2>&1 | tee "$OUT/bench_supcon.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "gpu_check: results in $OUT (status $status)"
exit $status
