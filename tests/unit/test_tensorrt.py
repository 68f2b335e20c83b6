"""The ``tensorrt`` backend's pure parts: optimization profiles from dims (as real Polygraphy ``Profile`` objects),
how TensorRT 10 and 11 build (strongly typed, TF32), the trtexec command line and trtexec's own version, cache keys,
fp16 tolerances, parser error messages and the reasons it is unavailable. None of this needs TensorRT or CUDA;
the end-to-end checks are in ``tests/integration/test_tensorrt.py``."""

from __future__ import annotations

import importlib.util
import os
import shutil
import types

import pytest
import torch

from pytest_deploy import tensor
from pytest_deploy.backends import canonical_name, get_backend
from pytest_deploy.backends import tensorrt as trt_backend
from pytest_deploy.backends.tensorrt import (
    build_settings,
    describe_parser_errors,
    engine_cache_key,
    parse_trtexec_version,
    polygraphy_profiles,
    profile_shapes,
    timing_cache_key,
    trtexec_command,
    trtexec_version,
    unavailable_reason,
)
from pytest_deploy.compare import resolve_tolerance, widen_for_precision
from pytest_deploy.spec import InputSpace


def space(inputs, dims, names=None) -> InputSpace:
    return InputSpace.resolve(inputs, dims, names=names)


# ------------------------------------------------------------------------------ registry, options


def test_registered_under_its_name_and_alias():
    assert canonical_name("trt") == "tensorrt"
    assert get_backend("TRT").name == "tensorrt"


def test_options_become_backend_options(pytester):
    pytester.makeconftest("""
        def pytest_configure(config):
            from pytest_deploy.options import read_settings
            config._trt = read_settings(config).backend_options
    """)
    pytester.makepyfile("def test_x(request):\n    print('OPTS', request.config._trt)\n")
    result = pytester.runpytest("-s", "--deploy-trt-fp16", "--deploy-trt-builder=trtexec", "--deploy-trt-tf32")
    result.stdout.fnmatch_lines(["*OPTS*'precision': 'fp16'*'trt_tf32': True*'trt_builder': 'trtexec'*"])
    result = pytester.runpytest("-s")
    assert "trt_" not in result.stdout.str() and "precision" not in result.stdout.str()


# ------------------------------------------------------------------------------------ profiles


def test_profile_spans_the_dims_with_opt_inside():
    shapes = profile_shapes(space([tensor("batch", 3, 32, 32)], {"batch": (1, 8)}, names=["x"]))
    assert shapes == {"x": ((1, 3, 32, 32), (2, 3, 32, 32), (8, 3, 32, 32))}


def test_a_dim_with_a_single_value_gives_min_opt_max_equal():
    shapes = profile_shapes(space([tensor("batch", 4)], {"batch": (5, 5)}, names=["x"]))
    assert shapes == {"x": ((5, 4), (5, 4), (5, 4))}
    assert trt_backend.dynamic_profiles(shapes) == {}


def test_opt_is_clamped_into_the_bounds():
    s = space([tensor("n", 4)], {"n": (1, 8)}, names=["x"])
    s.opt_dims = lambda: {"n": 99}
    assert profile_shapes(s)["x"][1] == (8, 4)
    s.opt_dims = lambda: {"n": 0}
    assert profile_shapes(s)["x"][1] == (1, 4)


def test_inputs_sharing_a_dim_get_the_same_sizes():
    s = space([tensor("batch", "seq"), tensor("batch", "seq", 8)], {"batch": (1, 4), "seq": (3, 16)},
              names=["ids", "emb"])
    shapes = profile_shapes(s)
    (lo_a, opt_a, hi_a), (lo_b, opt_b, hi_b) = shapes["ids"], shapes["emb"]
    assert (lo_a, hi_a) == ((1, 3), (4, 16)) and (lo_b, hi_b) == ((1, 3, 8), (4, 16, 8))
    assert opt_a == opt_b[:2] and all(lo <= o <= hi for lo, o, hi in zip(lo_a, opt_a, hi_a))


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="the real ONNX export needs pip install 'pytest-deploy[onnx]'")
def test_profiles_are_named_as_the_real_onnx_export_names_the_inputs():
    """forward(x, *rest): the exporter names the graph's inputs x, rest_0, rest_1; the profiles must use the
    names of the graph TensorRT parses, whatever convention pytest-deploy has."""
    import torch

    from pytest_deploy.reference import forward_arg_names

    class VarArgs(torch.nn.Module):
        def forward(self, x, *rest):
            return x + sum(rest)

    model = VarArgs()
    example = (torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 3))
    batch = torch.export.Dim("b", min=1, max=4)
    program = torch.export.export(model, example, dynamic_shapes=({0: batch}, ({0: batch}, {0: batch})))
    graph = torch.onnx.export(program, example, dynamo=True, verbose=False).model
    exported = [i.name for i in graph.graph.inputs]
    declared = space([tensor("b", 3)] * 3, {"b": (1, 4)}, names=forward_arg_names(model, 3))
    assert list(profile_shapes(declared)) == exported


def test_polygraphy_profile_spans_the_dynamic_inputs():
    """A real Polygraphy Profile (polygraphy imports TensorRT lazily: building a profile needs none)."""
    pytest.importorskip("polygraphy")
    from polygraphy.backend.trt import Profile

    shapes = {"x": ((1, 3), (2, 3), (8, 3)), "scale": ((4,), (4,), (4,))}
    (profile,) = polygraphy_profiles(shapes)
    assert isinstance(profile, Profile) and list(profile) == ["x"]
    assert (tuple(profile["x"].min), tuple(profile["x"].opt), tuple(profile["x"].max)) == shapes["x"]
    assert polygraphy_profiles({"x": ((2, 3), (2, 3), (2, 3))}) == []


# ------------------------------------------------------------------------------------- trtexec


SHAPES = {"x": ((1, 3, 32, 32), (2, 3, 32, 32), (8, 3, 32, 32)), "scale": ((4,), (4,), (4,))}


def _parse_shapes(text: str) -> dict[str, tuple[int, ...]]:
    return {name: tuple(int(d) for d in dims.split("x")) for name, dims in (p.rsplit(":", 1) for p in text.split(","))}


def test_trtexec_command_builds_the_profile_the_shapes_describe():
    cmd = trtexec_command("m.onnx", "m.engine", SHAPES, strongly_typed=True, timing_cache="t.cache")
    flags = dict(arg.split("=", 1) for arg in cmd[1:] if "=" in arg)
    assert cmd[0] == "trtexec" and flags["--onnx"] == "m.onnx" and flags["--saveEngine"] == "m.engine"
    dynamic = {name: s for name, s in SHAPES.items() if s[0] != s[2]}  # a static input gets no shapes
    for i, flag in enumerate(("--minShapes", "--optShapes", "--maxShapes")):
        assert _parse_shapes(flags[flag]) == {name: s[i] for name, s in dynamic.items()}
    assert "--stronglyTyped" in cmd and flags["--timingCacheFile"] == "t.cache"
    assert "--stronglyTyped" not in trtexec_command("m.onnx", "m.engine", SHAPES)


def test_trtexec_command_never_asks_for_fp16_and_turns_tf32_off_unless_allowed():
    for strongly_typed in (False, True):
        cmd = trtexec_command("m.onnx", "m.engine", SHAPES, strongly_typed=strongly_typed)
        assert "--fp16" not in cmd and "--noTF32" in cmd  # fp16 comes from the converted graph (TensorRT 11: no flag)
    assert "--noTF32" not in trtexec_command("m.onnx", "m.engine", SHAPES, tf32=True)


def test_trtexec_command_for_a_static_model_has_no_shapes_and_fp32_by_default():
    cmd = trtexec_command("m.onnx", "m.engine", {"x": ((2, 4), (2, 4), (2, 4))})
    assert not any(a.startswith(("--minShapes", "--optShapes", "--maxShapes", "--fp16", "--stronglyTyped",
                                 "--timingCache")) for a in cmd)


@pytest.mark.parametrize("version, precision, tf32, expected", [
    ("10.13.3.9", "fp32", False, {"strongly_typed": False, "tf32": False}),
    ("10.13.3.9", "fp16", False, {"strongly_typed": True, "tf32": False}),  # the fp16 graph's types decide
    ("11.4.0.13", "fp32", False, {"strongly_typed": True, "tf32": False}),  # TensorRT 11: strongly typed only
    ("11.4.0.13", "fp16", True, {"strongly_typed": True, "tf32": True}),
    ("10.13.3.9", "int8", False, {"strongly_typed": True, "tf32": False}),  # the QDQ graph's Q/DQ nodes decide
])
def test_build_settings_for_tensorrt_10_and_11(version, precision, tf32, expected):
    assert build_settings(version, precision, tf32) == expected


@pytest.mark.parametrize("output, version", [
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] [b12] # trtexec --version\n", "10.3.0"),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v110400] # trtexec --version", "11.4.0"),
    ("[I] TensorRT version: 10.13.3\n", "10.13.3"),
    ("trtexec: command not understood", None),
])
def test_trtexec_version_is_read_from_its_output(output, version):
    assert parse_trtexec_version(output) == version


def test_trtexec_version_runs_the_binary_on_path(tmp_path, monkeypatch):
    """A stand-in trtexec on PATH that prints TensorRT 11's banner: the version the trtexec route keys by is the
    binary's, not the Python module's (this tests our reading of its output, not TensorRT)."""
    script = tmp_path / "trtexec"
    script.write_text("#!/bin/sh\necho '&&&& RUNNING TensorRT.trtexec [TensorRT v110400] # trtexec --version'\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    assert trtexec_version(shutil.which("trtexec")) == "11.4.0"
    assert trtexec_version(str(tmp_path / "missing")) is None


def test_trtexec_shapes_list_several_inputs_and_quote_names_with_colons():
    shapes = {"a": ((1, 2), (2, 2), (4, 2)), "in:0": ((1,), (2,), (4,))}
    cmd = trtexec_command("m.onnx", "e", shapes, trtexec="/opt/trt/bin/trtexec")
    assert cmd[0] == "/opt/trt/bin/trtexec"
    assert "--minShapes=a:1x2,'in:0':1" in cmd and "--maxShapes=a:4x2,'in:0':4" in cmd


# ----------------------------------------------------------------------------------- cache keys


def test_engine_cache_key_changes_with_every_part():
    flags = {"builder": "python", "strongly_typed": False, "tf32": False, "shapes": {"x": [[1, 4], [2, 4], [8, 4]]},
             "workspace": 1 << 30}
    gpu = {"gpu": "NVIDIA H100", "driver": "580.65", "cuda": "12.8"}
    base = engine_cache_key("abc", "10.3.0", gpu, flags)
    assert base == engine_cache_key("abc", "10.3.0", dict(gpu), dict(flags))
    variants = [
        engine_cache_key("abd", "10.3.0", gpu, flags),
        engine_cache_key("abc", "10.4.0", gpu, flags),
        engine_cache_key("abc", "10.3.0", {**gpu, "gpu": "NVIDIA A100"}, flags),
        engine_cache_key("abc", "10.3.0", {**gpu, "driver": "590.10"}, flags),
        engine_cache_key("abc", "10.3.0", {**gpu, "cuda": "13.0"}, flags),
        engine_cache_key("abc", "10.3.0", gpu, {**flags, "strongly_typed": True}),
        engine_cache_key("abc", "10.3.0", gpu, {**flags, "tf32": True}),
        engine_cache_key("abc", "10.3.0", gpu, {**flags, "builder": "trtexec"}),
        engine_cache_key("abc", "10.3.0", gpu, {**flags, "shapes": {"x": [[1, 4], [2, 4], [16, 4]]}}),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_timing_cache_key_is_per_tensorrt_version_and_gpu():
    assert timing_cache_key("10.3.0", "H100") == timing_cache_key("10.3.0", "H100")
    assert len({timing_cache_key("10.3.0", "H100"), timing_cache_key("10.4.0", "H100"),
                timing_cache_key("10.3.0", "A100")}) == 3


# ----------------------------------------------------------------------------------- tolerances


def test_fp16_widens_the_default_tolerances():
    default = resolve_tolerance("tensorrt")
    assert default.float32 == (1e-3, 1e-3)
    wide = widen_for_precision(default, default, "fp16")
    assert wide.float32 == (1e-2, 1e-2)
    assert wide.for_dtype("float16") == (1e-2, 1e-2)
    assert wide.for_dtype("float64") == (1e-2, 1e-2)
    assert wide.for_dtype("bfloat16") == default.for_dtype("bfloat16")  # already wider


@pytest.mark.parametrize("kwargs", [{"atol": 1e-4}, {"rtol": 5e-2}, {"atol": {"trt": 3e-3}},
                                    {"tolerances": {"tensorrt": (2e-3, 2e-3)}}])
def test_fp16_keeps_tolerances_the_user_gave(kwargs):
    user = resolve_tolerance("tensorrt", **kwargs)
    assert widen_for_precision(user, resolve_tolerance("tensorrt"), "fp16") is user


def test_bf16_widens_to_the_bfloat16_row_and_fp32_changes_nothing():
    default = resolve_tolerance("onnx")
    assert widen_for_precision(default, default, "bf16").float32 == default.for_dtype("bfloat16")
    assert widen_for_precision(default, default, "fp32") is default


# ------------------------------------------------------------------------------- parser errors


class FakeError:
    def __init__(self, node, op, desc, index=3):
        self._node, self._op, self._desc, self._index = node, op, desc, index

    def node_name(self):
        return self._node

    def node_operator(self):
        return self._op

    def desc(self):
        return self._desc

    def node(self):
        return self._index


def test_parser_errors_name_node_op_and_user_line():
    text = describe_parser_errors([FakeError("node_Det_3", "Det", "no importer registered for op: Det")],
                                  where=lambda node: ("models.py", 12, "return torch.det(x)"))
    assert text == ("node 'node_Det_3' (op Det): no importer registered for op: Det\n"
                    "  from models.py:12  `return torch.det(x)`")


def test_parser_error_without_a_node_name_uses_its_index():
    assert describe_parser_errors([FakeError("", "", "bad graph", index=7)]) == "node #7 (op ?): bad graph"


# -------------------------------------------------------------------------------- availability


@pytest.fixture
def env(monkeypatch):
    """Pretend which modules exist, whether CUDA is visible and whether trtexec is on PATH."""
    state = types.SimpleNamespace(modules={"tensorrt", "polygraphy", "onnx", "onnxscript"}, cuda=True, trtexec=True)
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name in ("tensorrt", "polygraphy", "onnx", "onnxscript"):
            return object() if name in state.modules else None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(trt_backend, "_cuda_device", lambda: state.cuda)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/trtexec" if state.trtexec and name == "trtexec" else None)
    return state


def test_available_with_tensorrt_and_cuda(env):
    assert unavailable_reason({}) is None
    assert unavailable_reason({"trt_builder": "trtexec"}) is None
    assert get_backend("tensorrt").unavailable_reason({}) is None


def test_reason_without_the_tensorrt_module(env):
    env.modules.discard("tensorrt")
    assert unavailable_reason({}) == ('tensorrt: tensorrt not installed; pip install "pytest-deploy[tensorrt]" '
                                      "(tensorrt and polygraphy) on a machine with an NVIDIA GPU and CUDA")
    env.modules.discard("polygraphy")
    assert unavailable_reason({}).startswith("tensorrt: tensorrt and polygraphy not installed; pip install ")


def test_reason_for_bf16(env):
    assert unavailable_reason({"precision": "fp16"}) is None
    assert unavailable_reason({"precision": "bf16"}).startswith(
        "tensorrt: bf16 needs the float32 graph converted to bfloat16, and onnxconverter-common converts to float16 "
        "only;")


def test_reason_without_the_onnx_exporter(env):
    env.modules.discard("onnxscript")
    assert unavailable_reason({}) == ("tensorrt: builds from the ONNX export, which needs onnxscript; "
                                      "pip install 'pytest-deploy[onnx]'")


def test_reason_without_a_cuda_device(env):
    env.cuda = False
    assert unavailable_reason({}) == (
        "tensorrt: no CUDA device is visible (torch.cuda.is_available() is False); TensorRT runs on NVIDIA GPUs only: "
        'run on a machine with one and a CUDA build of torch (pip install "pytest-deploy[tensorrt]" (tensorrt and '
        "polygraphy) on a machine with an NVIDIA GPU and CUDA)")


def test_reason_for_the_trtexec_builder_without_trtexec(env):
    env.trtexec = False
    assert unavailable_reason({}) is None  # the python builder does not need it
    assert unavailable_reason({"trt_builder": "trtexec"}) == (
        "tensorrt: --deploy-trt-builder=trtexec needs the trtexec binary on PATH (it ships in the bin/ directory of "
        "TensorRT's tar or deb packages); add it to PATH, or use --deploy-trt-builder=python")


def test_cuda_check_asks_torch():
    import torch

    assert trt_backend._cuda_device() is torch.cuda.is_available()


def test_verify_outside_pytest_raises_backend_unavailable_here():
    import torch

    from pytest_deploy import BackendUnavailable, verify

    reason = unavailable_reason({})
    if reason is None:
        pytest.skip("TensorRT and a CUDA device are present here")
    with pytest.raises(BackendUnavailable, match="^tensorrt: "):
        verify(torch.nn.Linear(4, 2).eval(), "trt", inputs=[tensor("batch", 4)], dims={"batch": (1, 2)})


# ------------------------------------------------------------------------------ shape tensors


def test_shape_tensor_values_span_the_declared_integer_range():
    from pytest_deploy import tensor

    s = space([tensor("batch", 8), tensor(2, dtype=torch.int64, low=1, high="seq")], {"batch": (1, 4), "seq": (4, 16)})
    # integer values lie in [low, high): a bound naming a dim spans that dim's bounds
    assert trt_backend.shape_tensor_values(s, "input_1") == ([1, 1], [8, 8], [15, 15])


def test_shape_tensor_needs_a_fixed_one_dimensional_integer_spec():
    from pytest_deploy import tensor
    from pytest_deploy.errors import StageError

    s = space([tensor("batch", dtype=torch.int64, low=1, high=5)], {"batch": (1, 4)})
    with pytest.raises(StageError, match=r"needs a fixed 1-D spec; inputs= declares shape \('batch',\)"):
        trt_backend.shape_tensor_values(s, "input_0")
    with pytest.raises(StageError, match="no spec in inputs= names it"):
        trt_backend.shape_tensor_values(s, "shape")
