#!/usr/bin/env bash
# All GPU figures of one device session, most important first; each step is time-boxed and writes
# its JSON as soon as it has it. Usage (repo root): OUT=benchmarks/results bash benchmarks/run_device.sh
set -u
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:$PWD:${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
timeout "${TRAIN_S:-170}" python3 -m benchmarks.bench_train --runs ${RUNS:-base:512 tiny:512 large:512 base:128 large:128} \
    --budget-s "${TRAIN_BUDGET_S:-120}" --warmup 6 --iters 15 --profile base:512 --out "$OUT" 2>&1 | grep -v Warning
# embedding: base, bf16, torch.compile, 32 x 10 s; the release beside it when a copy is at $RELEASE
timeout "${EMBED_S:-150}" python3 -m benchmarks.bench_embed --presets base --device cuda --iters 20 --max-seconds 30 \
    ${RELEASE:+--release "$RELEASE"} --out "$OUT"
timeout 45 python3 -m benchmarks.bench_loader --workers 16 --clips 600 --seconds 8 --out "$OUT"
[ -f .devcarry/reference.npz ] && timeout 20 python3 -m benchmarks.frontend_parity --reference .devcarry/reference.npz --out "$OUT"
ls -la "$OUT"
