#!/usr/bin/env bash
# Issue 28's readings, round three, as run on 2026-12-07: one core per chain, one stage at a time.
#   chain A: R3, then R1 + R3 (one results root: they share M0, D_M0 and M1)
#   chain B: Bernoulli-drawn D_M0 under the per-pixel reading
#   chain C: the chosen reading's 16 rows x 3 seeds (vae_coeffs_r1_r3 or vae_coeffs_r1): ~5.3 core-hours
# Each launch runs the code snapshot it took (collapse/snapshot.py), so the checkout may be edited meanwhile.
# Resume: run the same command again; every finished stage is skipped (content-addressed).
#   nohup bash docs/results/readings3/chain.sh A /work/results > /work/results/logs/chainA.out 2>&1 &
set -u
chain=$1; out=${2:-/work/results}
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$out/logs"
run() {   # grid results_root
  nice -n 10 $PY sweeps/launch.py grid=$1 results_root=$2 cluster=local cluster.max_parallel=1 train.threads=1 \
    > "$out/logs/$1.log" 2>&1
  echo "$1 exit $? $(date)" >> "$out/logs/chain.log"
}
case $chain in
  A) run vae_readings_r3 "$out/readings3"; run vae_readings_r1_r3 "$out/readings3" ;;
  B) run vae_readings_binary "$out/readings3b" ;;
  C) run "${GRID:-vae_coeffs_r1_r3}" "$out/readings3" ;;
esac
