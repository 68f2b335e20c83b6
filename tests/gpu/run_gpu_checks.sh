#!/usr/bin/env bash
# Every GPU path pytest-deploy has, on one GPU machine: one line per check, exit 1 on any failure.
#
#   bash tests/gpu/run_gpu_checks.sh        # from a checkout; PYTHON=... picks the interpreter (default python3)
#
# It needs torch with CUDA, pytest, hypothesis and filelock; onnx, onnxruntime-gpu (with onnxscript, onnxsim),
# apache-tvm built with CUDA, and tensorrt with polygraphy each enable their checks. What is missing is said on its
# line ("NOT RUN: ..."), never counted as a pass. Set GPU_CHECKS_INSTALL=1 to try `pip install` of the missing
# runtimes first (a machine with no registry access just says it could not).
set -u
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# a checkout that is not pip-installed has no entry point: load the plugin by name (pytester's runs too)
if ! "$PY" -c "import importlib.metadata as m, sys; sys.exit(not any(e.value.startswith('pytest_deploy') for e in m.entry_points(group='pytest11')))" 2>/dev/null; then
    export PYTEST_PLUGINS=pytest_deploy.plugin
fi
status=0
started=$SECONDS

line() { printf '%-44s %s\n' "$1" "$2"; }
has() { "$PY" -c "$1" >/dev/null 2>&1; }
check() {  # check NAME PYTEST-ARGS...: one line; the failing output's tail below it
    local name=$1; shift
    local out rc
    out=$(timeout 300 "$PY" -m pytest -q -rs -p no:cacheprovider "$@" 2>&1); rc=$?
    if [ $rc -eq 0 ] && ! grep -q " skipped" <<<"$out"; then
        line "$name" "PASS ($(grep -Eo '[0-9]+ passed' <<<"$out" | tail -1))"
    elif [ $rc -eq 0 ]; then
        line "$name" "NOT RUN: $(grep -m1 -Eo 'SKIPPED \[[0-9]+\] [^:]+:[0-9]+: .*' <<<"$out" | sed 's/^SKIPPED \[[0-9]*\] [^ ]* //')"
    else
        line "$name" "FAIL (pytest exit $rc)"
        tail -40 <<<"$out" | sed 's/^/    /'
        status=1
    fi
}

if ! has "import torch; assert torch.cuda.is_available()"; then
    echo "no CUDA device visible to torch ($PY): nothing to check"
    exit 1
fi
"$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"

if [ "${GPU_CHECKS_INSTALL:-0}" = 1 ]; then
    for pkg in onnxruntime-gpu "tensorrt polygraphy" apache-tvm; do
        "$PY" -m pip install -q $pkg >/dev/null 2>&1 && echo "installed: $pkg" || echo "could not install: $pkg"
    done
fi

check "cuda check kept out of forked workers" tests/integration/test_isolation.py -k on_a_gpu
check "cuda runtime in a spawned worker" tests/integration/test_spawned_runtime.py -k on_a_gpu
check "onnx on CUDA, fp32 and fp16" tests/gpu/test_gpu_paths.py -k onnx
check "tvm built for CUDA" tests/gpu/test_gpu_paths.py -k tvm
check "tensorrt engines (fp32, fp16)" tests/integration/test_tensorrt.py

echo "$((SECONDS - started)) s; $([ $status -eq 0 ] && echo 'no failure' || echo 'FAILURES above')"
exit $status
