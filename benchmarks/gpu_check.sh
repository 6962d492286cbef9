#!/usr/bin/env bash
# GPU check on one CUDA device (H200), no network: see benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh                 # from the repository root
#
# Environment: PYTHON (default python3); WHEELS, a folder of wheels to install offline
# first if zstandard (or pytest) is missing (default: shared/wheels, then wheels);
# GPU_CHECK_TIMEOUT (seconds, default 480) bounds the Python part; extra arguments go to
# gpu_check.py (e.g. --steps 10, --skip-pytest).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
LIMIT="${GPU_CHECK_TIMEOUT:-480}"

echo "== nvidia-smi"
nvidia-smi || echo "(nvidia-smi failed)"

wheels=""
for d in "${WHEELS:-}" shared/wheels wheels; do
    if [ -n "$d" ] && [ -d "$d" ]; then wheels="$d"; break; fi
done
for mod in zstandard pytest; do
    if ! "$PY" -c "import $mod" 2>/dev/null; then
        if [ -n "$wheels" ] && ls "$wheels"/*.whl >/dev/null 2>&1; then
            echo "== installing wheels from $wheels ($mod missing)"
            "$PY" -m pip install --no-index --no-deps --find-links "$wheels" "$wheels"/*.whl \
                || echo "(wheel install failed)"
        else
            echo "== $mod is missing and no wheels folder was found"
        fi
        break
    fi
done
if ! "$PY" -c "import mezo_ckpt" 2>/dev/null; then
    echo "== pip install --no-deps -e ."
    "$PY" -m pip install --no-deps --no-build-isolation -e . || echo "(editable install failed)"
fi

echo "== versions"
"$PY" - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
try:
    import triton
    print("triton", triton.__version__)
except Exception as e:  # reported, the check itself says what it cannot do
    print("triton import failed:", e)
EOF

echo "== gpu_check.py (timeout ${LIMIT} s)"
status=0
timeout --kill-after=20 "$LIMIT" "$PY" benchmarks/gpu_check.py "$@" || status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "gpu_check.py ran past ${LIMIT} s"
fi
exit "$status"
