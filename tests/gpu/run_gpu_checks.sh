#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one command, from the repository root:
#
#     tests/gpu/run_gpu_checks.sh [PYTHON]        # PYTHON defaults to .venv/bin/python, else python3
#
# 1. the machine: nvidia-smi, torch's CUDA, the ONNX Runtime providers, TensorRT/Polygraphy/trtexec versions;
# CUDA checks are never forked: their runtime is spawned (CUDA started in a fresh interpreter after this one counted devices)
step spawned-runtime "$PY" -m pytest tests/integration/test_spawned_runtime.py tests/integration/test_isolation.py -k "spawn or cuda" -q -rs -p no:cacheprovider

# 2. ONNX Runtime's CUDA provider: the onnx backend's tests (with onnxruntime-gpu they run on CUDA);
# 3. fp16: the precision tests, and the onnx backend at fp16 on CUDA (the converted graph runs as it is there);
# 4. TensorRT, when the tensorrt module is installed: its end-to-end tests at fp32 and fp16, both builders.
#
# Every step runs even when an earlier one fails; the script exits non-zero if any failed, and prints a summary.
# A step whose requirement is missing (onnxruntime-gpu, tensorrt) is reported as "skipped", never as passed.
set -u
cd "$(dirname "$0")/../.."
PY="${1:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${GPU_CHECKS_OUT:-gpu-checks}"
mkdir -p "$OUT"
declare -a SUMMARY=()
FAILED=0

step() {  # step NAME COMMAND...
    local name="$1"; shift
    echo "=== $name: $*"
    if "$@" 2>&1 | tee "$OUT/$name.log"; then
        SUMMARY+=("passed   $name")
    else
        SUMMARY+=("FAILED   $name (log: $OUT/$name.log)")
        FAILED=1
    fi
}

skip() { SUMMARY+=("skipped  $1: $2"); echo "=== $1: skipped: $2"; }

has() { "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)"; }

# 1. the machine
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
step environment "$PY" - <<'PY'
import importlib.metadata as md
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
assert torch.cuda.is_available(), "torch sees no CUDA device: install a CUDA build of torch"
print("device", torch.cuda.get_device_name(0))
for name in ("onnxruntime", "onnxruntime-gpu", "onnxconverter-common", "tensorrt", "polygraphy"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "not installed")
try:
    import onnxruntime
    print("onnxruntime providers", onnxruntime.get_available_providers())
except ImportError:
    pass
from pytest_deploy.fingerprint import gpu_environment
print("result key GPU", gpu_environment())
PY
command -v trtexec >/dev/null && { trtexec --version 2>&1 | head -3 | tee "$OUT/trtexec.txt"; }

# CUDA checks are never forked: their runtime is spawned (CUDA started in a fresh interpreter after this one counted devices)
step spawned-runtime "$PY" -m pytest tests/integration/test_spawned_runtime.py tests/integration/test_isolation.py -k "spawn or cuda" -q -rs -p no:cacheprovider

# 2. ONNX Runtime's CUDA provider
if "$PY" -c "import onnxruntime, sys; sys.exit('CUDAExecutionProvider' not in onnxruntime.get_available_providers())" 2>/dev/null; then
    step onnx-cuda "$PY" -m pytest tests/integration/test_onnx.py -q -rs -p no:cacheprovider
    step onnx-cuda-provider "$PY" - <<'PY'
import torch
from pytest_deploy import tensor, verify
r = verify(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).eval(), "onnx",
           inputs=[tensor("batch", 8)], dims={"batch": (1, 8)}, examples=5)
print("provider", r.details["onnxruntime_provider"], "max abs error", r.max_abs_error)
assert r.details["onnxruntime_provider"] == "CUDAExecutionProvider", r.details
PY
else
    skip onnx-cuda "onnxruntime has no CUDAExecutionProvider (pip install \"pytest-deploy[gpu]\", i.e. onnxruntime-gpu)"
fi

# 3. fp16
step precision "$PY" -m pytest tests/integration/test_precision.py -q -rs -p no:cacheprovider
step fp16-figures "$PY" - <<'PY'
import torch
from torch import nn
from pytest_deploy import tensor, verify
torch.manual_seed(0)
cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                    nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
for backend in ("onnx", "tensorrt"):
    try:
        r = verify(cnn, backend, inputs=[tensor("batch", 3, 16, 16)], dims={"batch": (1, 4)}, examples=10,
                   precision="fp16")
        print(backend, "fp16", r.outcome, "max abs", r.max_abs_error, "max rel", r.max_rel_error,
              "provider/emulation", r.details.get("onnxruntime_provider"), r.details.get("precision_emulation"))
    except Exception as exc:
        print(backend, "fp16", type(exc).__name__, str(exc).splitlines()[0])
        if backend == "onnx":
            raise
PY

# 4. TensorRT
if has tensorrt && has polygraphy; then
    step tensorrt "$PY" -m pytest tests/unit/test_tensorrt.py tests/integration/test_tensorrt.py -v -rs -p no:cacheprovider
else
    skip tensorrt "tensorrt or polygraphy not installed (pip install \"pytest-deploy[tensorrt]\")"
fi

echo
echo "=== summary (logs in $OUT/)"
printf '%s\n' "${SUMMARY[@]}"
exit $FAILED
