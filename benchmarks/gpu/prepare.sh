#!/usr/bin/env bash
# Prepare, on a machine with the package registries, what the GPU check carries to the lent GPU machine
# (where nothing can be fetched): .gpu-carry/ (git-ignored; about 50 MB) with
#   wheels/             the packages tuneforge needs that the machine's image lacks, for Python 3.12 on
#                       manylinux x86-64, at the versions of .ci/constraints.txt: hydra-core, omegaconf, antlr4 (built here: sdist only),
#                       datasets, dill, multiprocess, gguf, bitsandbytes (QLoRA), deepspeed (built here
#                       without compiled ops; it compiles them on the GPU machine when needed) and its
#                       pydantic, hjson;
#   smollm2-tokenizer/  SmolLM2's tokenizer (3.5 MB), read from the GGUF of `bash .ci/fetch-smollm2`, so the
#                       benchmark's records have their real token lengths.
# flash-attn is left out: its wheels are larger than the 64 MiB a device run may carry.
#
#   bash benchmarks/gpu/prepare.sh          # then: the device run of benchmarks/gpu/check.sh (docs/performance.md)
#
# PYTHON_VERSION (default 3.12) must match the GPU machine's python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
CARRY=.gpu-carry
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] && PYTHON=.venv/bin/python
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
mkdir -p "$CARRY/wheels" "$CARRY/build"
quiet() { grep -v "is ignored" >&2 || true; }
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do platforms+=(--platform "$p"); done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
  "${platforms[@]}" -d "$CARRY/wheels" -c .ci/constraints.txt \
  hydra-core omegaconf datasets dill multiprocess gguf bitsandbytes hjson pydantic pydantic-core annotated-types \
  typing-inspection 2>&1 | quiet
# pydantic pins pydantic-core exactly: fetch the one it names if another was taken
core=$(unzip -p "$CARRY"/wheels/pydantic-2*.whl '*/METADATA' | sed -n 's/^Requires-Dist: pydantic-core==\([0-9.]*\).*/\1/p')
if [ -n "$core" ] && ! ls "$CARRY"/wheels/pydantic_core-"$core"-*.whl >/dev/null 2>&1; then
  rm -f "$CARRY"/wheels/pydantic_core-*.whl
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
    "${platforms[@]}" -d "$CARRY/wheels" "pydantic-core==$core" 2>&1 | quiet
fi
# source-only packages: pure Python wheels built here (deepspeed without its compiled ops)
ls "$CARRY"/wheels/antlr4_python3_runtime-*.whl >/dev/null 2>&1 ||
  "$PYTHON" -m pip wheel -q --no-deps -w "$CARRY/wheels" "antlr4-python3-runtime==4.9.3" 2>&1 | quiet
ls "$CARRY"/wheels/deepspeed-*.whl >/dev/null 2>&1 ||
  DS_BUILD_OPS=0 "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$CARRY/wheels" "deepspeed>=0.16" 2>&1 | quiet
gguf=$(bash .ci/fetch-smollm2)
"$PYTHON" - "$gguf" "$CARRY/smollm2-tokenizer" <<'PY'
import sys
from pathlib import Path

from transformers import AutoTokenizer

gguf, target = Path(sys.argv[1]), Path(sys.argv[2])
if not (target / "tokenizer.json").is_file():
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(target))
PY
rm -rf "$CARRY/build"
du -sh "$CARRY" | sed "s/^/prepare: /"; ls "$CARRY"/wheels | sed "s/^/prepare:   /"
