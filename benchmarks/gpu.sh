#!/usr/bin/env bash
# The GPU path, proven once: on a machine with CUDA, from the repository root (`bash benchmarks/gpu.sh`), run the
# CUDA-marked tests and `clusterlab bench --device cuda --json`, and keep everything they print, with the GPU's and
# torch's description, under one folder: $OUT if set, else benchmarks/gpu-results/. About 8 minutes at most.
#
# Python: .venv/bin/python if the repository has one; else a python3 that imports torch; else a new .venv (with the
# system's packages visible) into which pip installs what is missing (torch 2.14.1 and the project with its tests).
# Nothing here stops at the first failure: each part's exit status is written to summary.txt.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
RESULTS="${OUT:-benchmarks/gpu-results}"
mkdir -p "$RESULTS"
SUMMARY="$RESULTS/summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }

# What the engine, the bench's reference loop and the tests import.
ready() { "$1" -c 'import torch, torchvision, numpy, scipy, sklearn, threadpoolctl, pytest' > /dev/null 2>&1; }

if [ -x .venv/bin/python ] && ready .venv/bin/python; then
    PY=.venv/bin/python
elif command -v python3 > /dev/null && ready python3; then
    PY=python3
else
    [ -x .venv/bin/python ] || python3 -m venv --system-site-packages .venv
    timeout 200 .venv/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1 -e '.[test]' \
        > "$RESULTS/pip.txt" 2>&1
    note "pip install: exit $?"
    PY=.venv/bin/python
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
note "python: $PY ($("$PY" --version 2>&1))"

nvidia-smi > "$RESULTS/nvidia-smi.txt" 2>&1
note "nvidia-smi: exit $?"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /' \
    | tee -a "$SUMMARY"
"$PY" - > "$RESULTS/torch.json" 2>&1 <<'EOF'
import json

import torch

cuda = torch.cuda.is_available()
print(json.dumps({
    "torch": torch.__version__,
    "cuda_runtime": torch.version.cuda,
    "cudnn": torch.backends.cudnn.version() if cuda else None,
    "cuda_available": cuda,
    "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
    "capability": list(torch.cuda.get_device_capability(0)) if cuda else None,
}, indent=2))
EOF
note "torch: $(tr -d '\n' < "$RESULTS/torch.json")"

timeout 120 "$PY" -m pytest -m cuda -v -rs -p no:cacheprovider tests/test_cuda.py > "$RESULTS/pytest-cuda.txt" 2>&1
note "pytest -m cuda: exit $? ($(tail -n 1 "$RESULTS/pytest-cuda.txt"))"

MNIST=""
for dir in ../shared/datasets/mnist shared/datasets/mnist; do
    if [ -f "$dir/train-images-idx3-ubyte.gz" ] || [ -f "$dir/train-images-idx3-ubyte" ]; then MNIST="$dir"; break; fi
done
if [ -n "$MNIST" ]; then DATA=(--dataset mnist --data-dir "$MNIST"); else DATA=(--dataset synthetic); fi
note "bench data: ${DATA[*]}"
timeout 150 "$PY" -m engine.cli bench --device cuda --json "${DATA[@]}" > "$RESULTS/bench-cuda.json" \
    2> "$RESULTS/bench-cuda.err"
note "bench --device cuda: exit $?"
"$PY" - "$RESULTS/bench-cuda.json" <<'EOF' | tee -a "$SUMMARY"
import json
import sys

try:
    r = json.load(open(sys.argv[1]))
except (OSError, ValueError) as exc:
    print(f"bench figures: none ({exc})")
    sys.exit(0)
for key, target in (("cuda_graph_steps_per_s", 20_000), ("batched_256_model_steps_per_s", 500_000),
                    ("engine_steps_per_s", None), ("batched_speedup", None), ("roofline_share", None)):
    value = r.get(key)
    goal = "" if target is None or value is None else f" (target {target:,}: {'met' if value >= target else 'not met'})"
    print(f"{key}: {value if value is None else f'{value:,.2f}'}{goal}")
EOF
echo "results in $RESULTS"
