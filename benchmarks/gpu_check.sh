#!/usr/bin/env bash
# One-shot device check; writes one markdown file (default gpu_check.md). See gpu_check.py.
# Its cifar100 section times every method on the two CIFAR-100 pairs and prints the projected
# wall time of the whole reference table (benchmarks/cifar100_table.py; docs/baselines.md).
#
#   benchmarks/gpu_check.sh [--device cuda|cpu] [--quick] [--data PATH] [--out FILE]
#
# --data defaults to .carry/cifar10-jpeg.tar.gz when that file exists. Wheels under
# .carry/wheels/ (dependencies a bare GPU machine lacks, e.g. omegaconf) are installed into a
# temporary folder on PYTHONPATH first.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if compgen -G ".carry/wheels/*.whl" >/dev/null; then
    site="$(mktemp -d)"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$site" .carry/wheels/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
data=()
if [[ " $* " != *" --data "* && -f .carry/cifar10-jpeg.tar.gz ]]; then
    data=(--data .carry/cifar10-jpeg.tar.gz)
fi
exec "$PYTHON" benchmarks/gpu_check.py "${data[@]}" "$@"
