#!/bin/bash
# Issue 19's GPU figures in one run, for a machine with a CUDA GPU and keydyn installed with a CUDA torch
# (pip install -e .[bench]): the MPPI call against pytorch_mppi on the GPU (target <= 2 ms on an H100), and
# the 200-pair goal-reaching evaluation of the shipped top_down SDS model in batches of 50 with the planner on
# the GPU (target: under a minute). Writes JSON and logs under $OUT (default gpu_figures/).
#
#     OUT=gpu_figures bash benchmarks/gpu.sh
set -euo pipefail
OUT=${OUT:-gpu_figures}
mkdir -p "$OUT"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device: this script measures the GPU'; print(torch.cuda.get_device_name())" | tee "$OUT/device.txt"
python benchmarks/planning.py --device cuda --repeats 30 --loop-steps 20 > "$OUT/planning.json"
start=$(date +%s.%N)
keydyn evaluate --run src/keydyn/models/top_down/sds --episodes 200 --batch 50 --workers 0 --videos 0 \
    --mpc.device cuda --out "$OUT/evaluate_sds" --no-progress > "$OUT/evaluate_sds.log" 2>&1
echo "{\"evaluate_200_pairs_batch_50_s\": $(echo "$(date +%s.%N) - $start" | bc)}" > "$OUT/evaluate_time.json"
cat "$OUT/planning.json" "$OUT/evaluate_time.json"
