#!/bin/bash
# Issue 19's GPU figures in one run, for a machine with a CUDA GPU and keydyn installed with a CUDA torch
# (pip install -e .[bench]); each step has its own time limit, so one that hangs leaves the others' figures.
#   0. The tests that need a GPU (CUDA-graph rollouts equal step-by-step ones; skipped elsewhere).
#   1. The 200-pair goal-reaching evaluation of the shipped top_down SDS model: 8 worker processes, each running
#      25 episodes in lockstep, the planner (B x N rollouts a call) and the descriptor network (B images a call)
#      on the GPU (target: under a minute).
#   2. benchmarks/planning.py on the GPU: the MPPI call against pytorch_mppi's (target <= 2 ms on an H100) and
#      the control loop without perception.
#   3. benchmarks/vision.py on the GPU: descriptor inference and localisation per frame, training images per
#      second, the control loop with perception.
# Writes JSON and logs under $OUT (default gpu_figures/); PYTHON names the interpreter (default python).
#
#     OUT=gpu_figures bash benchmarks/gpu.sh
set -uo pipefail
OUT=${OUT:-gpu_figures}
PY=${PYTHON:-python}
export MUJOCO_GL=${MUJOCO_GL:-egl} PYTHONPATH="benchmarks${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device: this script measures the GPU'; print(torch.cuda.get_device_name())" | tee "$OUT/device.txt" || exit 1
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$OUT/cuda_tests.log" 2>&1
echo "cuda tests exit $?"; tail -n 3 "$OUT/cuda_tests.log"
start=$(date +%s.%N)
timeout 240 $PY -m keydyn.cli evaluate --run src/keydyn/models/top_down/sds --episodes 200 --workers 8 --batch 25 \
    --videos 0 --mpc.device cuda --encoder-device cuda --out "$OUT/evaluate_sds" --no-progress > "$OUT/evaluate_sds.log" 2>&1
status=$?
echo "{\"evaluate_200_pairs_8_workers_batch_25_s\": $($PY -c "print(round($(date +%s.%N) - $start, 1))"), \"exit\": $status}" | tee "$OUT/evaluate_time.json"
tail -n 4 "$OUT/evaluate_sds.log"
timeout 100 $PY benchmarks/planning.py --device cuda --repeats 30 --loop-steps 20 > "$OUT/planning.json" 2> "$OUT/planning.log"
echo "planning exit $?"; cat "$OUT/planning.json"
timeout 150 $PY benchmarks/vision.py --device cuda --threads 8 --repeats 20 --train-steps 10 --loop-steps 20 > "$OUT/vision.json" 2> "$OUT/vision.log"
echo "vision exit $?"; cat "$OUT/vision.json"
