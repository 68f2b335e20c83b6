#!/usr/bin/env bash
# Every GPU path pytest-deploy has, on one GPU machine, in under 8 minutes: one line per check.
#
#   bash tests/gpu/run_gpu_checks.sh [PYTHON]      # from anywhere; PYTHON (or $PYTHON) defaults to python3
#
# Each line reads PASS, FAIL (with the tail of pytest's output below it) or "NOT RUN: <why>" (a runtime, a
# device or the time budget missing): NOT RUN is never a pass. Exit status: 1 when any check failed (or there is
# no CUDA device), 2 when none failed but some did not run, 0 when every check passed.
#
# Missing runtimes (onnxruntime-gpu, tensorrt with polygraphy, apache-tvm) are first tried with `pip install`,
# each under a short timeout; a machine without registry access says what could not be installed and goes on.
# Environment: GPU_CHECKS_INSTALL=0 skips the installs; GPU_CHECKS_BUDGET (seconds, default 450) bounds the whole
# script, each pytest run getting what is left of it (at most its own cap); GPU_CHECKS_INSTALL_TIMEOUT (default
# 60) bounds each pip install.
set -u
cd "$(dirname "$0")/../.." || exit 1
PY=${1:-${PYTHON:-python3}}
BUDGET=${GPU_CHECKS_BUDGET:-450}
INSTALL_TIMEOUT=${GPU_CHECKS_INSTALL_TIMEOUT:-60}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SECONDS=0
passed=0 failed=0 not_run=0

line() { printf '%-34s %s\n' "$1" "$2"; }
has() { "$PY" -c "$1" >/dev/null 2>&1; }

if ! has "import torch"; then
    echo "no CUDA device: $PY cannot import torch; run with a Python that has a CUDA build of torch"
    exit 1
fi
if ! has "import torch; assert torch.cuda.is_available()"; then
    echo "no CUDA device visible to torch ($PY, torch $("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)' 2>/dev/null)): nothing to check; run this on a machine with an NVIDIA GPU and a CUDA build of torch"
    exit 1
fi
if ! has "import pytest, hypothesis, filelock, pytest_deploy"; then
    echo "$PY lacks pytest, hypothesis, filelock or pytest_deploy's own imports: pip install -e . (from this checkout) first"
    exit 1
fi
# a checkout that is not pip-installed has no entry point: load the plugin by name (pytester's runs too)
if ! has "import importlib.metadata as m, sys; sys.exit(not any(e.value.startswith('pytest_deploy') for e in m.entry_points(group='pytest11')))"; then
    export PYTEST_PLUGINS=pytest_deploy.plugin
fi

install() {  # install WHAT PACKAGE...: pip install under a timeout; one line either way
    local what=$1; shift
    local out rc why
    out=$(timeout -k 5 "$INSTALL_TIMEOUT" "$PY" -m pip install -q --disable-pip-version-check --retries 0 \
          --timeout 10 "$@" 2>&1); rc=$?
    if [ $rc -eq 0 ]; then
        line "install $what" "installed: $*"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        line "install $what" "could not install $*: pip did not finish within ${INSTALL_TIMEOUT} s"
    else
        # a connection failure says more than pip's closing "No matching distribution"
        why=$(grep -m1 -Ei 'NewConnectionError|Failed to establish|name resolution|unreachable|refused|timed out' \
              <<<"$out" || grep -E '^ERROR' <<<"$out" | tail -1)
        line "install $what" "could not install $* (pip exit $rc: $(cut -c1-160 <<<"${why:-no error printed}"))"
    fi
}

if [ "${GPU_CHECKS_INSTALL:-1}" != 0 ]; then
    need=$("$PY" - <<'EOF' 2>/dev/null
import importlib.util as u
missing = [p for m, p in (("onnx", "onnx"), ("onnxscript", "onnxscript"), ("onnxconverter_common",
           "onnxconverter-common")) if u.find_spec(m) is None]
try:
    import onnxruntime
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        missing.append("onnxruntime-gpu")
except ImportError:
    missing.append("onnxruntime-gpu")
print("onnx=" + " ".join(missing))
import torch
cuda = (torch.version.cuda or "").split(".")[0]
trt = [] if u.find_spec("tensorrt") else [f"tensorrt-cu{cuda}" if cuda in ("12", "13") else "tensorrt"]
print("tensorrt=" + " ".join(trt + ([] if u.find_spec("polygraphy") else ["polygraphy"])))
print("tvm=" + ("" if u.find_spec("tvm") else "apache-tvm>=0.27 apache-tvm-ffi<0.1.15"))
EOF
)
    for group in onnx tensorrt tvm; do
        pkgs=$(sed -n "s/^$group=//p" <<<"$need")
        # shellcheck disable=SC2086  # one word per package
        [ -n "$pkgs" ] && install "$group" $pkgs
    done
fi

"$PY" - <<'EOF'
import importlib, shutil
import torch
print(f"GPU: {torch.cuda.get_device_name(0)} | torch {torch.__version__} | CUDA {torch.version.cuda}")
found = []
for name in ("onnxruntime", "tensorrt", "polygraphy", "tvm"):
    try:
        found.append(f"{name} {importlib.import_module(name).__version__}")
    except Exception:
        found.append(f"{name} absent")
print("runtimes: " + ", ".join(found) + f", trtexec {shutil.which('trtexec') or 'absent'}")
EOF

check() {  # check NAME CAP NODEID...: one pytest run, at most CAP seconds and what is left of the budget
    local name=$1 cap=$2; shift 2
    local limit=$((BUDGET - SECONDS - 5)) out rc reason
    [ $limit -gt "$cap" ] && limit=$cap
    if [ "$limit" -lt 20 ]; then
        line "$name" "NOT RUN: the script's ${BUDGET} s budget is spent (GPU_CHECKS_BUDGET)"
        not_run=$((not_run + 1))
        return
    fi
    local start=$SECONDS
    out=$(timeout -k 5 "$limit" "$PY" -m pytest -q -rs -p no:cacheprovider "$@" 2>&1); rc=$?
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        line "$name" "FAIL: timed out after ${limit} s"
    elif [ $rc -eq 0 ] && grep -Eq '[0-9]+ skipped' <<<"$out"; then
        reason=$(grep -m1 -E '^SKIPPED \[[0-9]+\] ' <<<"$out" | sed -E 's/^SKIPPED \[[0-9]+\] [^ ]+:[0-9]+: //')
        line "$name" "NOT RUN: ${reason:-skipped (no reason given)}"
        not_run=$((not_run + 1))
        return
    elif [ $rc -eq 0 ] && grep -Eq '[0-9]+ passed' <<<"$out"; then
        line "$name" "PASS ($((SECONDS - start)) s)"
        passed=$((passed + 1))
        return
    else
        line "$name" "FAIL: pytest exit $rc"
    fi
    tail -40 <<<"$out" | sed 's/^/    /'
    failed=$((failed + 1))
}

G=tests/gpu/test_gpu_paths.py
T=tests/integration/test_tensorrt.py
check "cuda kept out of forked workers" 90 \
    tests/integration/test_isolation.py::test_on_a_gpu_cuda_fails_in_a_forked_worker_so_cuda_checks_stay_in_process
check "cuda runtime in a spawned worker" 90 \
    tests/integration/test_spawned_runtime.py::test_on_a_gpu_cuda_starts_in_the_spawned_worker_after_the_parent_counted_devices
check "onnxruntime cuda fp32" 90 "$G::test_onnx_runs_on_the_cuda_provider[fp32]"
check "onnxruntime cuda fp16" 90 "$G::test_onnx_runs_on_the_cuda_provider[fp16]"
check "tensorrt fp32" 120 "$T::test_cnn_fp32"
check "tensorrt fp16" 120 "$T::test_cnn_fp16_uses_fp16_tolerances"
check "tensorrt int8" 150 "$T::test_cnn_int8_builds_the_symmetric_qdq_graph_into_a_strongly_typed_engine"
check "tensorrt dynamic batch" 120 "$T::test_dynamic_batch_runs_every_generated_shape"
check "tensorrt trtexec builder (fp16)" 120 "$T::test_trtexec_route"
check "tvm built for cuda" 150 "$G::test_tvm_builds_and_runs_for_cuda"

echo "gpu checks: $passed passed, $failed failed, $not_run not run in $SECONDS s"
[ $failed -gt 0 ] && exit 1
[ $not_run -gt 0 ] && exit 2
exit 0
