#!/usr/bin/env bash
# All GPU verification in one command, for a machine with a CUDA GPU and no
# network, whose Python already has torch (+ triton):
#
#   bash benchmarks/gpu_check.sh [OUTDIR]       # default benchmarks/results/local/gpu (git-ignored)
#   STAGES="sanitize tests" ...                 # only these stages (default: all, sanitize first)
#   STAGES="tests" bash benchmarks/gpu_check.sh OUT1        # split over two calls,
#   STAGES="lif supcon" bash benchmarks/gpu_check.sh OUT2   # e.g. 10-minute limits
#   FULL=1 ...        the benchmarks' full default sweeps
#   SKIP_BUILD=1 ...  no build: test the tcl_fast Python imports (e.g. a CPU machine: every GPU part says it skipped)
#   SJ_NATIVE=1 ...   also build SpikingJelly's native CUDA LIF from .whl/spikingjelly-*.tar.gz
#   TESTS="tests/ops/test_lif.py -k cuda" ...   a narrower test selection
#   LIF_ARGS="--dtypes float16 --T 8 32 ..." ...  bench_lif.py's arguments (lean sweep by default)
#
# Builds tcl_fast against the torch there (--no-build-isolation; a rebuild on
# the same machine is incremental), then runs the chosen stages: "sanitize"
# (first, so a short lease finds memory faults before anything else: the CUDA
# kernels' tests under compute-sanitizer memcheck, misaligned inputs included,
# racecheck on one small forward+backward, then the tests that need a second
# GPU; each part prints what it skipped and why: no compute-sanitizer, a
# sanitizer that cannot run on this device, one GPU), "tests" (the
# CUDA/Triton tests, each logged by name), "lif" (bench_lif.py, then
# profile_lif.py: kernel time vs the whole call, then the host time per call
# at 1024 neurons), "supcon" (the benchmarks) and "step" (bench_train_step.py:
# a whole training step of ResNet-19 and SpikingJelly's zoo spiking_resnet18,
# original vs converted, memory, images/s and the largest batch in a budget;
# then bench_bn_lif.py and bench_lif_decay.py, their tables in the log).
# Logs + JSON go to OUTDIR (at most 8 files, so a lent machine can return them
# all). Wheels placed in ./.whl (e.g. spikingjelly for side-by-side numbers)
# are installed first, offline. Each stage has its own time limit (T_BUILD,
# T_TESTS, T_LIF, T_PROF, T_HOST, T_SUPCON, T_STEP, T_PEAK, T_BN, T_DECAY, T_SJ seconds) so a slow stage cannot eat the later ones; by
# default the benchmarks run a lean sweep that fits a short lease
# (SpikingJelly's own shape, 64x65536, in full). T_TOTAL (default 480 s, from
# the start of the build) caps the whole call: each stage gets at most what is
# left of it, and a stage with under 15 s left is skipped, saying so.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results/local/gpu}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg TCL_FAST_EXPECT_CUDA_KERNELS=1
T_TESTS=${T_TESTS:-240} T_LIF=${T_LIF:-200} T_SUPCON=${T_SUPCON:-100}
STAGES=" ${STAGES:-sanitize tests lif supcon step} "
wants() { [[ "$STAGES" == *" $1 "* ]]; }
status=0
stage() { echo; echo "=== $* ($(date -u +%T))"; }
START=$(date +%s)
# limit CAP: seconds a stage may run, CAP or what is left of T_TOTAL; 0 when
# under 15 s are left (the caller skips the stage).
limit() {
  local left=$(( ${T_TOTAL:-480} - ($(date +%s) - START) ))
  if [ "$left" -lt 15 ]; then echo 0; elif [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}
skip() { echo "$1: skipped: $2" | tee -a "$LOG"; }
# timed CAP cmd...: cmd under `timeout $(limit CAP)`; skipped (said, status 0) once T_TOTAL is spent.
timed() {
  local lim; lim=$(limit "$1"); shift
  if [ "$lim" -eq 0 ]; then echo "skipped: T_TOTAL (${T_TOTAL:-480} s) spent: $*"; return 0; fi
  timeout "$lim" "$@"
}
{
  stage environment
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  python -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  python -c "import triton; print('triton', triton.__version__)" || true
} 2>&1 | tee "$LOG"
if ls .whl/*.whl >/dev/null 2>&1; then
  python -m pip install -q --no-index --no-deps --no-compile --target /tmp/tcl_fast_site .whl/*.whl \
    && export PYTHONPATH=/tmp/tcl_fast_site:${PYTHONPATH:-}
fi
# SpikingJelly's native CUDA LIF (its fastest GPU path) from an sdist placed in
# .whl/, only with SJ_NATIVE=1: a minute or two of nvcc.
# Built in the background, beside our own build and the tests, and waited for
# before the lif stage, so it costs no lease time of its own.
SJ_PID=""
if wants lif && [ "${SJ_NATIVE:-0}" = 1 ] && ls .whl/spikingjelly-*.tar.gz >/dev/null 2>&1; then
  mkdir -p /tmp/sj_src && tar xzf .whl/spikingjelly-*.tar.gz -C /tmp/sj_src
  ( MAX_JOBS=${MAX_JOBS:-16} timeout "${T_SJ:-240}" python benchmarks/build_spikingjelly_native.py /tmp/sj_src/spikingjelly-* > /tmp/sj_native.log 2>&1 ) &
  SJ_PID=$!
fi
stage build | tee -a "$LOG"
if [ "${SKIP_BUILD:-0}" = 1 ]; then
  skip "build" "SKIP_BUILD=1: using the tcl_fast that Python imports here"
else
build_start=$(date +%s)
MAX_JOBS=${MAX_JOBS:-16} timeout "${T_BUILD:-300}" python -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
  || { echo "build failed or passed T_BUILD, see $OUT/build.log" | tee -a "$LOG"; tail -40 "$OUT/build.log"; exit 1; }
echo "build took $(( $(date +%s) - build_start )) s" | tee -a "$LOG"
tail -3 "$OUT/build.log" | tee -a "$LOG"
rm -f "$OUT/build.log"  # kept only on failure: OUT returns at most 8 files
fi
python -c "from tcl_fast import _extension as e; assert e.has_cuda_kernels(), 'no CUDA kernels'; print('CUDA kernels: ok')" 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

if wants sanitize; then
stage "sanitize: compute-sanitizer memcheck, racecheck, second GPU" | tee -a "$LOG"
SAN_LOG="$OUT/sanitize.log"
: > "$SAN_LOG"
SANITIZER="$(command -v compute-sanitizer || true)"
for d in "${CUDA_HOME:-}" /usr/local/cuda; do
  [ -z "$SANITIZER" ] && [ -n "$d" ] && [ -x "$d/bin/compute-sanitizer" ] && SANITIZER="$d/bin/compute-sanitizer"
done
# The LIF kernels' CUDA tests (misaligned storage offsets among them), the
# Triton launches' and the spike packing; -k drops the CPU-only ones.
read -r -a SAN_SEL <<< "${SAN_TESTS:-tests/ops/test_lif_gpu_threads.py tests/ops/test_lif.py tests/ops/test_lif_affine.py tests/ops/test_lif_per_neuron_decay.py tests/ops/test_spike_pack.py}"
SAN_K="${SAN_K:-cuda or misaligned}"
if [ -z "$SANITIZER" ]; then
  skip "sanitize memcheck/racecheck" "no compute-sanitizer on PATH, in \$CUDA_HOME/bin or /usr/local/cuda/bin"
else
  # A sanitizer that cannot attach here (e.g. 'Device not supported' under gVisor) fails this probe.
  lim=$(limit 60)
  if [ "$lim" -eq 0 ]; then skip "sanitize" "T_TOTAL spent"
  elif ! timeout "$lim" "$SANITIZER" --tool memcheck --error-exitcode 9 python -c \
      "import torch; torch.ones(1, device='cuda').add_(1); torch.cuda.synchronize()" >> "$SAN_LOG" 2>&1; then
    skip "sanitize memcheck/racecheck" "compute-sanitizer could not run a one-element kernel on this device (see sanitize.log)"
    tail -5 "$SAN_LOG" | tee -a "$LOG"
  else
    lim=$(limit "${T_SANITIZE:-150}")
    if [ "$lim" -eq 0 ]; then skip "memcheck" "T_TOTAL spent"; else
      echo "memcheck: ${SAN_SEL[*]} -k '$SAN_K' (limit $lim s)" | tee -a "$LOG"
      timeout "$lim" "$SANITIZER" --tool memcheck --error-exitcode 9 --print-limit 20 \
        python -m pytest "${SAN_SEL[@]}" -k "$SAN_K" -q -rfEs -p no:cacheprovider >> "$SAN_LOG" 2>&1
      rc=$?; [ $rc -eq 0 ] || status=1
      echo "memcheck exit $rc (9: the sanitizer found errors; 124: out of time)" | tee -a "$LOG"
      grep -E "========= (Invalid|Misaligned|Address|Program hit|ERROR SUMMARY)|(FAILED|ERROR) tests/| passed| failed" "$SAN_LOG" | head -30 | tee -a "$LOG"
    fi
    lim=$(limit "${T_RACECHECK:-60}")
    if [ "$lim" -eq 0 ]; then skip "racecheck" "T_TOTAL spent"; else
      echo "racecheck: one small forward+backward, float32 and float16, plain and per-channel (limit $lim s)" | tee -a "$LOG"
      timeout "$lim" "$SANITIZER" --tool racecheck --error-exitcode 9 python - >> "$SAN_LOG" 2>&1 <<'PY'
import torch, tcl_fast
from tcl_fast.nn import LIFMultiStep
for dtype in (torch.float32, torch.float16):
    x = (torch.randn(20, 2, 8, 16, 16, device="cuda") + 0.5).to(dtype).requires_grad_()
    tcl_fast.lif_multistep(x, tau=2.0).sum().backward()
    lif = LIFMultiStep(learnable_tau=True, channels=8).cuda()
    lif(x).sum().backward()
torch.cuda.synchronize()
print("racecheck case done")
PY
      rc=$?; [ $rc -eq 0 ] || status=1
      echo "racecheck exit $rc" | tee -a "$LOG"
      grep -E "========= (Race|Error|ERROR SUMMARY|RACECHECK SUMMARY)|racecheck case done" "$SAN_LOG" | head -10 | tee -a "$LOG"
    fi
  fi
fi
NGPU=$(python -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "${NGPU:-0}" -lt 2 ]; then
  skip "second GPU" "$NGPU GPU(s) here; the two-device tests need two"
else
  lim=$(limit 60)
  if [ "$lim" -eq 0 ]; then skip "second GPU" "T_TOTAL spent"; else
    echo "second GPU: ops on cuda:1 while cuda:0 is current (limit $lim s)" | tee -a "$LOG"
    timeout "$lim" python -m pytest tests/ops/test_triton_device.py -k "second_gpu" -q -rfEs \
      -p no:cacheprovider >> "$SAN_LOG" 2>&1
    rc=$?; [ $rc -eq 0 ] || status=1
    echo "second GPU exit $rc" | tee -a "$LOG"; tail -3 "$SAN_LOG" | tee -a "$LOG"
  fi
fi
fi

if wants tests; then
stage tests | tee -a "$LOG"
XDIST=""
python -c "import xdist" 2>/dev/null && XDIST="-n 8"
python -c "import pytest_timeout" 2>/dev/null && XDIST="$XDIST --timeout 120"
read -r -a TEST_SEL <<< "${TESTS:-tests/ops tests/losses tests/test_build.py}"
timed "$T_TESTS" python -m pytest "${TEST_SEL[@]}" -v -rfEs --durations=20 $XDIST > "$OUT/tests.log" 2>&1
[ $? -eq 0 ] || status=1
grep -E " (FAILED|ERROR) " "$OUT/tests.log" | head -40 | tee -a "$LOG"; tail -3 "$OUT/tests.log" | tee -a "$LOG"
fi

if wants lif; then
if [ -n "$SJ_PID" ]; then
  stage spikingjelly-native | tee -a "$LOG"
  wait "$SJ_PID"; echo "exit $?" | tee -a "$LOG"; tail -5 /tmp/sj_native.log | tee -a "$LOG"
fi
stage bench_lif | tee -a "$LOG"
if [ -n "${FULL:-}" ]; then LIF_ARGS=(); else
  # float16 is SpikingJelly's benchmark dtype (the issue's target), float32 the
  # common one; each sample is 10 back-to-back calls, so 6 rounds suffice.
  read -r -a LIF_ARGS <<< "${LIF_ARGS:---dtypes float16 float32 --neurons 4194304 --T 4 8 16 32 --no-compile --plif --repeats 6}"; fi
timed "$T_LIF" python benchmarks/bench_lif.py "${LIF_ARGS[@]}" --out "$OUT/lif_cuda.json" 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
stage profile_lif | tee -a "$LOG"
read -r -a PROF_ARGS <<< "${PROF_ARGS:---T 4 32 --dtypes float16 float32}"
timed "${T_PROF:-60}" python benchmarks/profile_lif.py "${PROF_ARGS[@]}" --out "$OUT/profile_lif_cuda.json" 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
stage "host time per call (1024 neurons)" | tee -a "$LOG"
timed "${T_HOST:-40}" python benchmarks/bench_lif.py --neurons 1024 --T 4 --dtypes float32 --no-compile --op-path \
  --repeats 50 --out "$OUT/lif_host_cuda.json" 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

fi

if wants supcon; then
stage bench_supcon | tee -a "$LOG"
if [ -n "${FULL:-}" ]; then SC_ARGS=(); else
  read -r -a SC_ARGS <<< "${SUPCON_ARGS:---sizes 16384 65536 --dims 128 --dtypes bfloat16 --methods naive fused matmul}"; fi
timed "$T_SUPCON" python benchmarks/bench_supcon.py --device cuda "${SC_ARGS[@]}" --out "$OUT/supcon_cuda.json" 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

if wants step; then
stage bench_train_step | tee -a "$LOG"
read -r -a STEP_ARGS <<< "${STEP_ARGS:---models resnet19 sj_resnet18 --T 6 --batch 32 --time-T 6 --repeats 5 --budget-gib 16 --budget-T 6}"
timed "${T_STEP:-150}" python benchmarks/bench_train_step.py --device cuda "${STEP_ARGS[@]}" --out "$OUT/train_step_cuda.json" 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
# Whole-step peak (max_memory_allocated) per method, each row a fresh process, and the largest
# batch whose step peak fits PEAK_BUDGET_MIB (doubling, then bisection): tcl_fast plain,
# optimize_memory alone (ckpt) and with pack + BN fusion (all), beside SpikingJelly's memopt at
# levels 1, 2 (blocks split into their children) and 4 (2, then greedy unwrapping); level 3
# (chunks in time) is not exact with BN over T*B. Rows print as they finish (a timeout keeps
# them); table in the log only.
stage "step peak and batch within a budget (optimize_memory)" | tee -a "$LOG"
timeout "${T_PEAK:-240}" python benchmarks/bench_train_step.py --peak --device cuda --models resnet19 sj_resnet18 \
  --T 4 --batch 32 --repeats 3 --peak-configs plain ckpt all sj+memopt1 sj+memopt2 sj+memopt4 \
  --budget-mib "${PEAK_BUDGET_MIB:-4096}" --budget-max-batch 1024 --out /tmp/train_step_peak_cuda.json 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
# BN inside the LIF kernel per block, and a per-channel tau against a shared one: tables in the
# log only (OUT holds at most 8 files).
stage "bn_lif and per-channel decay" | tee -a "$LOG"
timed "${T_BN:-60}" python benchmarks/bench_bn_lif.py --shape 6 32 128 32 32 --layouts tb --rounds 20 \
  --min-time 3 --out /tmp/bn_lif_cuda.json 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
timed "${T_DECAY:-60}" python benchmarks/bench_lif_decay.py --shape 6 32 128 32 32 --dtypes float16 float32 \
  --rounds 20 --min-time 3 --out /tmp/lif_decay_cuda.json 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

echo "gpu_check: results in $OUT (status $status)" | tee -a "$LOG"
exit $status
