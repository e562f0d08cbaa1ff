#!/usr/bin/env bash
# The GPU path, checked on a GPU machine in one go, most important first (one H100/H200: the paper-scale
# timings within the first 5 minutes, all of it in about 10):
#   1. measure (bench/gpu_check.py, minutes 0-5): the stages' training steps through the DeepSpeed engine
#      (plain and distilled) for the 38.4M UNet and a t5-small-sized T5 at batch 32, DDPM sampling at batch
#      256/512 and T5 greedy generation (encoder apart) in the inference precision and fp32, Inception and
#      GPT-2 per item, peak GPU memory of each; then channels_last / torch.compile variants (to --budget-s).
#      Writes the rates file (RATES, default ./gpu_rates.json) and projects the paper grids from it.
#   2. a dry run estimating from that file: python sweeps/launch.py ... dry_run=true rates=FILE
#   3. the tests marked `gpu` (device placement, bf16 training, sampling on CUDA)
#   4. a tiny grid end to end in bf16 on the local executor: teacher, synth, students, evals (recorded
#      precision bf16), report
#   5. the step-time benchmark on the GPU (engine/bare, distilled/plain, bf16/fp32)
#   6. data parallel over 2 GPUs (torchrun, one stage through `python -m collapse.run`) against 1 GPU,
#      where 2 GPUs exist
# --tiny (or GPU_CHECK_TINY=1): 1 and 2 at tiny sizes, 3-6 skipped: a CPU test of this script (tests/test_gpu_check.py).
# Prints one summary line per check ("gpu_check: <check> PASS|FAIL|SKIP <detail>"); exit 1 if any failed.
# Run from the repo root with the project's venv: bash bench/gpu_check.sh [--tiny] [python]
set -uo pipefail
cd "$(dirname "$0")/.."
TINY=${GPU_CHECK_TINY:-}
if [ "${1:-}" = "--tiny" ]; then TINY=1; shift; fi
PY=${1:-${PYTHON:-.venv/bin/python}}
[ -x "$PY" ] || PY=python3
RATES=${RATES:-$PWD/gpu_rates.json}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
failed=0
summary=()
say() { summary+=("gpu_check: $*"); echo "gpu_check: $*"; }

gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
say "machine $(hostname) gpus=$gpus torch=$("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>/dev/null)${TINY:+ (--tiny)}"

# 1. the stages measured; the rates file
t0=$SECONDS
if "$PY" bench/gpu_check.py --out "$RATES" ${TINY:+--tiny} ${MEASURE_ARGS:-} 2>&1 | tee "$WORK/measure.log" | grep --line-buffered "^gpu_check: "; then
  say "measure PASS $(grep -c '^gpu_check: measure .* items/s' "$WORK/measure.log") measurements into $RATES in $((SECONDS - t0)) s; $(grep '^gpu_check: projection' "$WORK/measure.log" | sed 's/gpu_check: projection //' | tr '\n' ';')"
else
  say "measure FAIL $(grep -E 'FAIL|Error' "$WORK/measure.log" | tail -3 | tr '\n' ' ')"; tail -30 "$WORK/measure.log"; failed=1
fi

# 2. a dry run that estimates from the measured rates (GPU stages where this machine has a GPU)
if [ -s "$RATES" ] && out=$("$PY" sweeps/launch.py grid=ddpm_lambda profile=smoke cluster=local \
      results_root="$WORK/dry" dry_run=true rates="$RATES" 2>&1); then
  say "dry_run[rates] PASS $(echo "$out" | grep -E '^estimate' | head -1); $(echo "$out" | grep -c 'measured rate on') stage kinds from the file"
else
  say "dry_run[rates] FAIL $(echo "${out:-no rates file}" | tail -2 | tr '\n' ' ')"; failed=1
fi

if [ -n "$TINY" ]; then
  for check in "tests[gpu]" "grid[bf16]" "bench[train_step]" "data_parallel[2 GPUs]"; do say "$check SKIP --tiny"; done
  echo "---- summary"
  printf '%s\n' "${summary[@]}"
  exit $failed
fi

# 3. tests marked gpu (skipped, and so reported, without CUDA)
t0=$SECONDS
if out=$("$PY" -m pytest -q -m gpu -rs tests 2>&1); then
  say "tests[gpu] PASS $(echo "$out" | tail -1) in $((SECONDS - t0)) s"
else
  say "tests[gpu] FAIL $(echo "$out" | tail -1)"; echo "$out" | tail -40; failed=1
fi

# 4. a tiny grid end to end in bf16
t0=$SECONDS
root=$WORK/grid
if out=$("$PY" sweeps/launch.py grid=vae_smoke3 profile=smoke cluster=local results_root="$root" \
      train.bf16=true data.train_size=2048 data.test_size=512 train.epochs=2 2>&1); then
  loss=$(grep -h "test_loss" "$root"/logs/eval-*.log | grep "lam=1,beta=1,gamma=1" | sed "s/.*test_loss': \([0-9.]*\).*/\1/" | head -1)
  bf16=$(grep -l "bf16 (fp32 master weights)" "$root"/logs/*.log | wc -l)
  devices=$(grep -h "device .*, world" "$root"/logs/*.log | sed 's/.*device \([^,]*\),.*/\1/' | sort | uniq -c | xargs)
  precision=$(grep -ho '"precision": "[a-z0-9]*"' "$root"/manifest/*.json 2>/dev/null | sort | uniq -c | xargs)
  say "grid[bf16] PASS $(echo "$out" | grep -o 'done: [0-9]* stages ran') + report in $((SECONDS - t0)) s; $bf16 training stages in bf16 on: $devices; full L_SD student test loss $loss; synth/eval precision: ${precision:-none recorded}"
else
  say "grid[bf16] FAIL $(echo "$out" | tail -2 | tr '\n' ' ')"; failed=1
  tail -30 "$root"/logs/*.log 2>/dev/null | tail -60
fi

# 5. the step-time benchmark
t0=$SECONDS
if out=$(OMP_NUM_THREADS=1 "$PY" bench/train_step.py ${BENCH_ARGS:---rounds 6 --steps 100} 2>&1); then
  say "bench[train_step] PASS $(echo "$out" | grep -E '^(cpu|cuda)|^  [a-z0-9]+/[a-z0-9]+ ' | tr -s ' ' | tr '\n' ';') in $((SECONDS - t0)) s"
else
  say "bench[train_step] FAIL $(echo "$out" | tail -3 | tr '\n' ' ')"; failed=1
fi

# 6. 2-GPU data parallel against 1 GPU, same stage through the one entry point
if [ "$gpus" -ge 2 ]; then
  t0=$SECONDS
  if out=$("$PY" - "$WORK" <<'EOF' 2>&1
import json, os, subprocess, sys
from pathlib import Path
from collapse import plan
from collapse.grid import load_sweep
from collapse.run import write_spec
work = Path(sys.argv[1])
args = ["grid=vae_smoke3", "profile=smoke", "data.train_size=8192", "data.test_size=1024", "train.epochs=3"]
teacher = next(iter(plan.build(load_sweep([*args, f"results_root={work}/one"])).stages.values()))
result = {}
for name, cmd in (("one", [sys.executable, "-m", "collapse.run"]),
                  ("two", [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "collapse.run"])):
    root = work / name
    write_spec(root, teacher)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    subprocess.run([*cmd, str(root), teacher.key], check=True, env=env)
    record = json.loads((root / "manifest" / f"{teacher.key}.json").read_text())
    result[name] = record["metrics"]["best_test_loss"]
diff = abs(result["two"] - result["one"]) / result["one"]
print(f"RESULT 1 GPU {result['one']:.6f}, 2 GPUs {result['two']:.6f}, relative difference {diff:.2e}")
sys.exit(0 if diff < 1e-2 else 1)
EOF
  ); then
    say "data_parallel[2 GPUs] PASS $(echo "$out" | grep RESULT | sed 's/RESULT //') in $((SECONDS - t0)) s"
  else
    say "data_parallel[2 GPUs] FAIL $(echo "$out" | tail -3 | tr '\n' ' ')"; failed=1
  fi
else
  say "data_parallel[2 GPUs] SKIP only $gpus GPU(s) here"
fi

echo "---- summary"
printf '%s\n' "${summary[@]}"
exit $failed
