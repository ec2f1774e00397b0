#!/usr/bin/env bash
# The GPU check on a machine with a CUDA GPU and a CUDA build of torch, Lightning, transformers and peft
# (the lent GPU machine): install what benchmarks/gpu/prepare.sh put into .gpu-carry/ (wheels, offline),
# install tuneforge from this checkout, run benchmarks/gpu/check.py, and leave in $OUT (default
# gpu-check-results/): results.json, summary.md, logs.tar.gz (every run's log and the benchmark's results).
#
#   bash benchmarks/gpu/check.sh [check.py options, e.g. --budget 420 --steps environment,models,speed_1b_sdpa]
#
# Exit status: check.py's (0 all steps passed or skipped with a reason, 1 a step failed, 2 no GPU).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu-check-results}
WORK=${WORK:-/tmp/tuneforge-gpu-check}
PYTHON=${PYTHON:-python3}
CARRY=${CARRY:-.gpu-carry}
mkdir -p "$OUT" "$WORK"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ls "$CARRY"/wheels/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/tuneforge-site \
    "$CARRY"/wheels/*.whl || { echo "check.sh: installing the carried wheels failed" >&2; exit 2; }
  export PYTHONPATH=/tmp/tuneforge-site${PYTHONPATH:+:$PYTHONPATH}
fi
# tuneforge's built-in plugins are found through its entry points: it must be installed, not only on the path
"$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e . >"$WORK/install.log" 2>&1 ||
  { tail -20 "$WORK/install.log" >&2; echo "check.sh: pip install -e . failed" >&2; exit 2; }
tokenizer=()
[ -f "$CARRY/smollm2-tokenizer/tokenizer.json" ] && tokenizer=(--tokenizer "$CARRY/smollm2-tokenizer")
PYTHONUNBUFFERED=1 "$PYTHON" benchmarks/gpu/check.py --out "$OUT" --work "$WORK" "${tokenizer[@]}" "$@"
status=$?
tar czf "$OUT/logs.tar.gz" -C "$WORK" logs $(cd "$WORK" && ls -d speed-*/results.json speed-*/*.log 2>/dev/null) \
  2>/dev/null || true
exit $status
