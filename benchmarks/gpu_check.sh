#!/usr/bin/env bash
# GPU check of issue 12: optimizer tests, CUDA-vs-CPU agreement of the SAM gradients, the quick deep-net
# studies on CUDA (Fashion-MNIST only), and the throughput of SGD / SAM / 1-SAM on PreAct ResNet-18 at
# batch 128. Under 8 minutes on one large GPU.
#
#   benchmarks/gpu_check.sh                      # on a CUDA machine
#   benchmarks/gpu_check.sh --device cpu --smoke # what a machine without CUDA can check (tiny sizes, digits)
#   --dataset NAME   the data set of step 3 (default fashion-mnist; digits with --smoke)
#   --steps 3,4      run only these of the steps 1-4
#
# Each step reports its own failure and the next one still runs (a missing data set at step 3 does not
# stop the throughput step). Exit status: 0 when every step run passed; 2 bad option or no sharplab/torch;
# 3 no CUDA device; else 20 + the sum of 2^(k-1) over the failed steps k (21: step 1, 22: step 2, 24: step 3,
# 28: step 4; 24 + 8 = 32: steps 3 and 4), with a last line naming them.
#
# Output goes to $OUT (or ./runs/gpu-check): the study folders, throughput.json, and this log on stdout.
set -uo pipefail

DEVICE=cuda
SMOKE=0
DATASET=""
STEPS="1,2,3,4"
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="${2:?--device needs cuda or cpu}"; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    --dataset) DATASET="${2:?--dataset needs a name}"; shift 2 ;;
    --steps) STEPS="${2:?--steps needs a comma list of 1-4}"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (use --device cuda|cpu, --smoke, --dataset NAME, --steps 1,2,3,4)" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "error: --device $DEVICE: use cuda or cpu" >&2; exit 2 ;; esac
case ",$STEPS," in *[!0-9,]*|*,,*) echo "error: --steps $STEPS: use a comma list of 1-4" >&2; exit 2 ;; esac
for k in ${STEPS//,/ }; do
  case "$k" in 1|2|3|4) ;; *) echo "error: --steps $STEPS: steps are 1-4" >&2; exit 2 ;; esac
done
if [ -z "$DATASET" ]; then DATASET=$([ "$SMOKE" = 1 ] && echo digits || echo fashion-mnist); fi

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$HERE"
PY="${PYTHON:-$HERE/.venv/bin/python}"
if [ ! -x "$PY" ]; then PY="$(command -v python3)"; fi
# one interpreter start: 2 = cannot import, 3 = no CUDA (when asked for), else print the device
"$PY" - "$DEVICE" <<'PYEOF'
import sys
try:
    import torch
    import sharplab  # noqa: F401
except ImportError as exc:
    print(f"error: cannot import sharplab and torch ({exc}); run 'make install'", file=sys.stderr)
    sys.exit(2)
if sys.argv[1] == "cuda":
    if not torch.cuda.is_available():
        print(f"error: no CUDA device visible to torch ({torch.__version__}); rerun with --device cpu --smoke",
              file=sys.stderr)
        sys.exit(3)
    p = torch.cuda.get_device_properties(0)
    print(f"device: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}")
PYEOF
rc=$?
[ "$rc" = 0 ] || exit "$rc"
OUTDIR="${OUT:-$HERE/runs}/gpu-check"
mkdir -p "$OUTDIR"
START=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - START )) s] $*"; }
FAILED=()
MASK=0
wanted() { case ",$STEPS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
# run_step K TITLE FUNCTION: runs FUNCTION (its first failing command ends it), reports, never aborts the script
run_step() {
  local k="$1" title="$2" fn="$3"
  wanted "$k" || return 0
  stamp "$k/4 $title"
  ( set -e; "$fn" )  # not an if condition: there set -e would be ignored inside the subshell
  local rc=$?
  if [ "$rc" = 0 ]; then
    stamp "$k/4 passed"
  else
    echo "error: step $k/4 ($title) failed (exit $rc); going on with the next step" >&2
    FAILED+=("$k")
    MASK=$(( MASK + (1 << (k - 1)) ))
  fi
}

step1() {
  if [ "$SMOKE" = 1 ]; then
    "$PY" -m pytest -q -p no:cacheprovider tests/optim/test_sam_optimizer.py -x
  else
    "$PY" -m pytest -q -p no:cacheprovider tests/optim tests/sharpness -x
  fi
}

step2() {
"$PY" - "$DEVICE" <<'PYEOF'
import sys, torch, torch.nn.functional as F
from sharplab.models import build_model
from sharplab.optim import sam_grad
from sharplab.sharpness import hessian_eigenvalues, m_sharpness
dev = torch.device(sys.argv[1])
torch.manual_seed(0)
cpu = build_model("preact-resnet18", num_classes=10, norm="gn", width=4).double()
gpu = build_model("preact-resnet18", num_classes=10, norm="gn", width=4).double().to(dev)
gpu.load_state_dict(cpu.state_dict())
x, y = torch.rand(16, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (16,))
for kw in ({"rho": 0.05}, {"rho": 0.05, "m": 4}, {"rho": 0.05, "m": 1}):
    for mod in (cpu, gpu):
        mod.zero_grad()
    sam_grad(cpu, F.cross_entropy, x, y, **kw)
    sam_grad(gpu, F.cross_entropy, x.to(dev), y.to(dev), **kw)
    err = max(float((a.grad - b.grad.cpu()).abs().max() / (a.grad.abs().max() + 1e-30))
              for a, b in zip(cpu.parameters(), gpu.parameters()))
    assert err < 1e-8, (kw, err)
    print(f"  sam_grad {kw}: max relative difference {err:.1e}")
a = m_sharpness(cpu, F.cross_entropy, x, y, rho=0.1, m=8, steps=5)
b = m_sharpness(gpu, F.cross_entropy, x.to(dev), y.to(dev), rho=0.1, m=8, steps=5)
assert abs(a - b) <= 1e-8 * max(1.0, abs(a)), (a, b)
ha = float(hessian_eigenvalues(cpu, F.cross_entropy, x, y, k=1, iters=10)[0])
hb = float(hessian_eigenvalues(gpu, F.cross_entropy, x.to(dev), y.to(dev), k=1, iters=10)[0])
assert abs(ha - hb) <= 1e-6 * max(1.0, abs(ha)), (ha, hb)
print(f"  m-sharpness {a:.6f} vs {b:.6f}; top Hessian eigenvalue {ha:.6f} vs {hb:.6f}")
PYEOF
}

step3() {
  local common
  if [ "$SMOKE" = 1 ]; then
    common=(--device "$DEVICE" --dataset "$DATASET" --epochs 1 --quiet --set width=4 --set n_train=128 --set n_test=64 --set batch_size=32)
    "$PY" -m sharplab deep-net m-sharpness "${common[@]}" --rho 0.01 --m 8 --out "$OUTDIR/m-sharpness"
  else
    common=(--device "$DEVICE" --dataset "$DATASET" --quiet --set width=16 --set n_train=10000 --set n_test=2000 --set batch_size=128 --set lr=0.05)
    "$PY" -m sharplab deep-net m-sharpness "${common[@]}" --epochs 3 --rho 0.02,0.05 --m 32,8,1 --out "$OUTDIR/m-sharpness"
  fi
  "$PY" -m sharplab deep-net sharpness "${common[@]}" $([ "$SMOKE" = 1 ] && echo "--rho 0.01 --m 8" || echo "--epochs 3 --rho 0.02,0.05 --m 32,8,1") --out "$OUTDIR/m-sharpness"
  "$PY" -m sharplab deep-net finetune "${common[@]}" --epochs "$([ "$SMOKE" = 1 ] && echo 1 || echo 3)" --epochs-after 1 --out "$OUTDIR/finetune"
  "$PY" -m sharplab deep-net label-noise "${common[@]}" --epochs "$([ "$SMOKE" = 1 ] && echo 1 || echo 4)" --out "$OUTDIR/label-noise"
  "$PY" -m sharplab deep-net convergence "${common[@]}" --epochs "$([ "$SMOKE" = 1 ] && echo 1 || echo 20)" --set n_train=512 --out "$OUTDIR/convergence"
  for s in m-sharpness finetune label-noise convergence; do
    [ -s "$OUTDIR/$s/report.md" ] || { echo "error: $OUTDIR/$s/report.md missing" >&2; return 1; }
  done
}

step4() {
  if [ "$SMOKE" = 1 ]; then
    "$PY" benchmarks/deep_net_throughput.py --device "$DEVICE" --smoke | tee "$OUTDIR/throughput.txt"
  else
    "$PY" benchmarks/deep_net_throughput.py --device "$DEVICE" --chunk 32 | tee "$OUTDIR/throughput.txt"
  fi
  tail -n 1 "$OUTDIR/throughput.txt" > "$OUTDIR/throughput.json"
}

run_step 1 "optimizer tests" step1
run_step 2 "SAM / m-SAM / sharpness on $DEVICE agree with CPU (float64)" step2
run_step 3 "quick deep-net studies on $DEVICE ($DATASET)" step3
run_step 4 "throughput, PreAct ResNet-18 (GroupNorm), batch 128" step4
if [ "$MASK" = 0 ]; then
  stamp "done, every step passed; results in $OUTDIR"
  exit 0
fi
stamp "done; failed steps: ${FAILED[*]} (exit $(( 20 + MASK ))); results in $OUTDIR"
exit $(( 20 + MASK ))
