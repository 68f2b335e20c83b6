"""Unit tests for pytest_deploy.compare: flattening outputs, comparing them, resolving tolerances."""

from __future__ import annotations

import collections
import dataclasses
import math
from collections import namedtuple

import pytest
import torch

from pytest_deploy.backends import backend_names, get_backend
from pytest_deploy.compare import (
    Leaves,
    Tolerance,
    UnsupportedOutput,
    compare_outputs,
    flatten,
    format_number,
    resolve_tolerance,
)
from pytest_deploy.errors import SpecError

Out = namedtuple("Out", ["logits", "aux"])


@dataclasses.dataclass
class DataOut:
    x: object
    extra: object = None


def tol(atol: float, rtol: float = 0.0, dtype: str = "float32") -> Tolerance:
    return Tolerance({dtype: (atol, rtol)})


def paths(obj) -> list[str]:
    return [p for p, _ in flatten(obj)]


# --------------------------------------------------------------------------------- flatten


def test_flatten_tensor_is_one_leaf():
    t = torch.zeros(2)
    [(path, leaf)] = flatten(t)
    assert path == "output" and leaf is t


def test_flatten_paths_for_containers():
    t = torch.zeros(1)
    assert paths((t, t)) == ["output[0]", "output[1]"]
    assert paths([t, [t, t]]) == ["output[0]", "output[1][0]", "output[1][1]"]
    assert paths({"logits": t, "mask": t}) == ["output['logits']", "output['mask']"]
    assert paths({"a": (t, None), 3: t}) == ["output['a'][0]", "output['a'][1]", "output[3]"]


def test_flatten_namedtuple_and_dataclass_use_field_names():
    t = torch.zeros(1)
    assert paths(Out(t, [t])) == ["output.logits", "output.aux[0]"]
    assert paths(DataOut(t, {"k": t})) == ["output.x", "output.extra['k']"]
    assert paths((DataOut(Out(t, t)),)) == ["output[0].x.logits", "output[0].x.aux", "output[0].extra"]


@pytest.mark.parametrize("leaf", [None, 3, 2.5, True, "text"])
def test_flatten_none_and_scalars_are_leaves(leaf):
    assert flatten(leaf) == [("output", leaf)]
    assert flatten({"v": leaf}) == [("output['v']", leaf)]


def test_flatten_empty_containers_have_no_leaves():
    assert flatten(()) == [] and flatten({}) == [] and flatten([]) == []


class Opaque:
    pass


@pytest.mark.parametrize(
    "obj, where, typename",
    [
        ({"a": [torch.zeros(1), object()]}, "output['a'][1]", "builtins.object"),
        ((Opaque(),), "output[0]", f"{__name__}.Opaque"),
        ({1, 2}, "output", "builtins.set"),
        (DataOut, "output", "builtins.type"),  # a dataclass type is not an instance
    ],
)
def test_flatten_unsupported_names_path_and_type(obj, where, typename):
    with pytest.raises(UnsupportedOutput) as info:
        flatten(obj)
    assert str(info.value).startswith(f"{where} is a {typename};")
    assert "outputs must be tensors" in str(info.value)


# ---------------------------------------------------------------------- exact int / bool


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_integers_must_match_exactly(dtype):
    e = torch.tensor([1, 2, 3], dtype=dtype)
    assert compare_outputs(e, e.clone(), tol(0.0)).ok
    cmp = compare_outputs(e, torch.tensor([1, 2, 4], dtype=dtype), tol(100.0, 100.0))
    assert not cmp.ok
    [err] = cmp.errors
    assert err.reason == "values"
    assert "must match exactly" in err.text
    assert "1 of 3 elements differ" in err.text
    assert "first at index (2,): expected 3, got 4" in err.text
    assert err.max_abs == 1.0


def test_bools_must_match_exactly():
    e = torch.tensor([[True, False], [False, False]])
    assert compare_outputs(e, e.clone(), tol(0.0)).ok
    cmp = compare_outputs(e, torch.tensor([[True, False], [True, False]]), tol(1.0, 1.0))
    assert not cmp.ok
    assert "must match exactly" in cmp.errors[0].text
    assert "first at index (1, 0): expected False, got True" in cmp.errors[0].text


# -------------------------------------------------------------------------- float tolerance


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize(
    "expected, boundary, atol, rtol",
    [
        (0.0, 0.5, 0.5, 0.0),  # atol alone
        (2.0, 2.5, 0.0, 0.25),  # rtol alone: 0.25 * 2
        (4.0, 4.75, 0.25, 0.125),  # atol + rtol * |expected|
        (-4.0, -4.75, 0.25, 0.125),  # |expected|
    ],
)
def test_float_tolerance_boundary(dtype, expected, boundary, atol, rtol):
    name = str(dtype).replace("torch.", "")
    t = Tolerance({name: (atol, rtol)})
    e = torch.tensor([expected, 1.0], dtype=dtype)
    inside = torch.tensor([boundary, 1.0], dtype=dtype)
    away = math.copysign(math.inf, boundary - expected)
    outside = torch.tensor([torch.nextafter(torch.tensor(boundary, dtype=dtype), torch.tensor(away, dtype=dtype)).item(), 1.0],
                           dtype=dtype)
    ok = compare_outputs(e, inside, t)
    assert ok.ok
    assert ok.max_abs == pytest.approx(abs(boundary - expected))
    bad = compare_outputs(e, outside, t)
    assert not bad.ok
    [err] = bad.errors
    assert err.reason == "values" and err.path == "output"
    assert err.dtype == name
    assert f"1 of 2 elements exceed atol {atol:g} + rtol {rtol:g}*|expected|" in err.text
    assert "worst at index (0,)" in err.text


def test_tolerance_per_dtype_is_used():
    t = Tolerance({"float32": (0.0, 0.0), "float64": (1.0, 0.0)})
    assert compare_outputs(torch.zeros(1, dtype=torch.float64), torch.full((1,), 0.5, dtype=torch.float64), t).ok
    assert not compare_outputs(torch.zeros(1), torch.full((1,), 0.5), t).ok


def test_passing_comparison_keeps_error_statistics():
    e = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    g = torch.tensor([1.0, 2.002, 0.0], dtype=torch.float64)
    cmp = compare_outputs(e, g, tol(0.01, dtype="float64"))
    assert cmp.ok and not cmp.errors
    assert cmp.max_abs == pytest.approx(0.002)
    assert cmp.max_rel == pytest.approx(0.001)


def test_nan_matches_nan():
    e = torch.tensor([math.nan, 1.0])
    cmp = compare_outputs(e, e.clone(), tol(0.0))
    assert cmp.ok
    assert cmp.max_abs == 0.0 and cmp.max_rel == 0.0


@pytest.mark.parametrize("expected, got", [([math.nan, 1.0], [1.0, 1.0]), ([1.0, 1.0], [1.0, math.nan])])
def test_nan_against_a_number_fails(expected, got):
    cmp = compare_outputs(torch.tensor(expected), torch.tensor(got), tol(1e6, 1e6))
    assert not cmp.ok
    [err] = cmp.errors
    assert err.reason == "nan"
    assert "NaN in only one of eager and backend" in err.text
    assert err.max_abs == math.inf


def test_same_infinities_match():
    e = torch.tensor([math.inf, -math.inf, 0.0])
    assert compare_outputs(e, e.clone(), tol(0.0)).ok


@pytest.mark.parametrize(
    "expected, got",
    [(math.inf, -math.inf), (-math.inf, math.inf), (math.inf, 1e30), (1.0, math.inf), (math.inf, math.nan)],
)
def test_infinity_against_anything_else_fails(expected, got):
    cmp = compare_outputs(torch.tensor([expected]), torch.tensor([got]), tol(1e6, 1e6))
    assert not cmp.ok
    assert cmp.errors[0].max_abs == math.inf


def test_empty_tensors_match():
    assert compare_outputs(torch.zeros(0, 3), torch.zeros(0, 3), tol(0.0)).ok


# ------------------------------------------------------------------ dtype, shape, structure


def test_dtype_mismatch():
    cmp = compare_outputs(torch.zeros(2), torch.zeros(2, dtype=torch.float64), tol(1.0))
    [err] = cmp.errors
    assert err.reason == "dtype"
    assert err.text == "output: dtype float32 in eager, float64 from the backend"


def test_shape_mismatch():
    cmp = compare_outputs({"y": torch.zeros(2, 3)}, {"y": torch.zeros(3, 2)}, tol(1.0))
    [err] = cmp.errors
    assert err.reason == "shape" and err.path == "output['y']"
    assert "shape (2, 3) in eager, (3, 2) from the backend" in err.text


def test_structure_mismatch_counts_leaves():
    t = torch.zeros(1)
    cmp = compare_outputs((t, t), (t,), tol(1.0))
    [err] = cmp.errors
    assert err.reason == "structure"
    assert "eager returns 2 output leaves (output[0], output[1])" in err.text
    assert "the backend returns 1 (output[0])" in err.text


def test_error_names_the_differing_leaf_only():
    e = {"a": torch.zeros(2), "b": torch.zeros(2)}
    g = {"a": torch.zeros(2), "b": torch.tensor([0.0, 1.0])}
    cmp = compare_outputs(e, g, tol(0.1))
    assert [err.path for err in cmp.errors] == ["output['b']"]
    assert cmp.errors[0].text.startswith("output['b'] [float32, shape (2,)]")
    assert cmp.max_abs == 1.0


def test_python_scalar_leaves():
    t = tol(0.0)
    assert compare_outputs((3, None, "s"), (3, None, "s"), t).ok
    assert compare_outputs(3, torch.tensor(3), t).ok  # a one-element tensor stands for a number
    assert compare_outputs(torch.tensor(2.5), 2.5, t).ok
    assert compare_outputs(1.0, 1.0 + 1e-12, Tolerance({"float64": (1e-9, 0.0)})).ok
    assert not compare_outputs(1.0, 1.1, Tolerance({"float64": (1e-9, 0.0)})).ok
    [err] = compare_outputs(3, 4, t).errors
    assert err.reason == "type" and "eager gives 3, the backend gives 4" in err.text
    [err] = compare_outputs(torch.zeros(2), None, t).errors
    assert err.reason == "type" and "the backend gives NoneType" in err.text


def test_already_flattened_leaves():
    out = {"a": torch.ones(2), "b": (torch.zeros(1),)}
    assert compare_outputs(out, Leaves(flatten(out)), tol(0.0)).ok
    other = {"a": torch.ones(2), "b": (torch.ones(1),)}
    assert not compare_outputs(Leaves(flatten(out)), other, tol(0.0)).ok


# ---------------------------------------------------------------------- smallest tolerance


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("atol, rtol", [(0.0, 0.0), (1e-5, 1e-4), (1e-3, 0.0), (0.0, 1e-3)])
def test_needed_tolerances_are_the_smallest_that_pass(seed, dtype, atol, rtol):
    gen = torch.Generator().manual_seed(seed)
    scale = (1.0, 1e-3, 1e3)[seed % 3]
    atol *= scale
    e = (torch.randn(64, generator=gen, dtype=torch.float64) * scale + 0.01).to(dtype)
    g = (e.to(torch.float64) + torch.randn(64, generator=gen, dtype=torch.float64) * scale * 0.01).to(dtype)
    name = str(dtype).replace("torch.", "")
    cmp = compare_outputs(e, g, Tolerance({name: (atol, rtol)}))
    assert not cmp.ok
    [err] = cmp.errors
    assert err.needed_atol > atol and err.needed_rtol > rtol
    assert compare_outputs(e, g, Tolerance({name: (err.needed_atol, rtol)})).ok
    assert not compare_outputs(e, g, Tolerance({name: (err.needed_atol * 0.9, rtol)})).ok
    assert compare_outputs(e, g, Tolerance({name: (atol, err.needed_rtol)})).ok
    assert not compare_outputs(e, g, Tolerance({name: (atol, err.needed_rtol * 0.9)})).ok
    if rtol == 0:
        assert err.needed_atol == pytest.approx(err.max_abs)


def test_needed_rtol_is_infinite_where_expected_is_zero():
    [err] = compare_outputs(torch.zeros(2), torch.tensor([0.0, 0.5]), tol(0.1, 0.1)).errors
    assert err.needed_rtol == math.inf
    assert err.needed_atol == pytest.approx(0.5)


def test_format_number():
    assert format_number(None) == "-"
    assert format_number(math.inf) == "inf"
    assert format_number(0.0) == "0"
    assert format_number(1.2345e-5) == "1.23e-05"
    assert format_number(0.5) == "0.5"


@pytest.mark.parametrize("x", [1.2345e-5, 9.9849e-5, 2.3251906, 123456.0, 1.23e-5, 0.5])
def test_format_number_round_up_never_goes_below(x):
    text = format_number(x, round_up=True)
    assert float(text) >= x
    assert float(text) <= x * 1.01


# ------------------------------------------------------------------------ resolve_tolerance


def test_default_tolerances_per_backend():
    trace = resolve_tolerance("trace")
    assert trace.float32 == (1e-5, 1e-4)
    assert trace.for_dtype("float64") == (1e-10, 1e-8)
    assert resolve_tolerance("script").float32 == trace.float32
    exact = resolve_tolerance("state_dict")
    # serialization round trips run the same kernels: no looser than TorchScript
    for dtype in ("float64", "float32", "float16", "bfloat16"):
        assert exact.for_dtype(dtype) <= trace.for_dtype(dtype)
    assert exact.float32[0] <= 1e-6 and exact.float32[1] <= 1e-5
    assert resolve_tolerance("pickle").per_dtype == exact.per_dtype
    assert resolve_tolerance("checkpoint").per_dtype == exact.per_dtype


def test_unknown_output_dtype_uses_float32_tolerance():
    t = resolve_tolerance("trace")
    assert t.for_dtype("int64") == t.float32
    assert Tolerance({}).float32 == (0.0, 0.0)


def test_user_numbers_replace_defaults_for_every_float_dtype():
    t = resolve_tolerance("trace", atol=0.5)
    assert t.float32 == (0.5, 1e-4)
    assert t.for_dtype("float64") == (0.5, 1e-8)
    assert t.for_dtype("bfloat16")[0] == 0.5
    t = resolve_tolerance("export", rtol=2)
    assert t.float32 == (1e-5, 2.0) and isinstance(t.float32[1], float)
    assert resolve_tolerance("state_dict", atol=1e-3, rtol=1e-2).for_dtype("float16") == (1e-3, 1e-2)


def test_per_backend_dict_applies_only_to_that_backend():
    atol = {"torchscript-trace": 0.5, "export": 0.25}
    assert resolve_tolerance("trace", atol=atol).float32 == (0.5, 1e-4)
    assert resolve_tolerance("export", atol=atol).float32 == (0.25, 1e-4)
    assert resolve_tolerance("script", atol=atol).float32 == (1e-5, 1e-4)
    assert resolve_tolerance("trace", rtol={"TRACE": 0.125}).float32 == (1e-5, 0.125)


@pytest.mark.parametrize(
    "backend, alias",
    [(name, alias) for name in backend_names() for alias in get_backend(name).aliases],
)
def test_per_backend_dict_accepts_every_alias(backend, alias):
    assert resolve_tolerance(backend, atol={alias: 0.5}).float32[0] == 0.5
    assert resolve_tolerance(backend, tolerances={alias.upper(): (0.5, 0.25)}).float32 == (0.5, 0.25)


def test_trt_alias_applies_to_tensorrt():
    assert resolve_tolerance("tensorrt", atol={"trt": 1e-2}).float32[0] == 1e-2
    assert resolve_tolerance("tensorrt", tolerances={"trt": (1e-2, 2e-2)}).float32 == (1e-2, 2e-2)


def test_pair_in_atol_dict_sets_both_halves():
    assert resolve_tolerance("trace", atol={"trace": (0.5, 0.25)}).float32 == (0.5, 0.25)
    assert resolve_tolerance("trace", rtol={"trace": (0.5, 0.25)}).float32 == (1e-5, 0.25)
    assert resolve_tolerance("trace", atol={"trace": (0.5, 0.25)}, rtol=0.125).float32 == (0.5, 0.125)
    assert resolve_tolerance("script", atol={"trace": (0.5, 0.25)}).float32 == (1e-5, 1e-4)


def test_tolerances_dict():
    tolerances = {"torchscript-script": (0.1, 0.2)}
    assert resolve_tolerance("script", tolerances=tolerances).float32 == (0.1, 0.2)
    assert resolve_tolerance("script", tolerances=tolerances).for_dtype("float64") == (0.1, 0.2)
    assert resolve_tolerance("trace", tolerances=tolerances).float32 == (1e-5, 1e-4)
    # the per-backend pair is more specific than a number for every backend
    assert resolve_tolerance("script", atol=1.0, rtol=1.0, tolerances=tolerances).float32 == (0.1, 0.2)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"atol": -1}, "atol=-1 must be a non-negative number"),
        ({"atol": math.nan}, "atol=nan must be a non-negative number"),
        ({"atol": "1e-3"}, "atol='1e-3' must be a non-negative number"),
        ({"rtol": True}, "rtol=True must be a non-negative number"),
        ({"rtol": {"trace": -0.5}}, "rtol['trace']=-0.5 must be a non-negative number"),
        ({"atol": {"trace": (1, 2, 3)}}, "must be a non-negative number"),
        ({"atol": {"no_such_backend": 0.1}}, "unknown backend 'no_such_backend'"),
        ({"tolerances": [(0.1, 0.2)]}, "must be a dict {backend: (atol, rtol)}"),
        ({"tolerances": {"trace": 0.1}}, "tolerances['trace']=0.1 must be an (atol, rtol) pair"),
        ({"tolerances": {"trace": (0.1, -1)}}, "tolerances['trace'] rtol=-1 must be a non-negative number"),
        ({"tolerances": {"trace": ("a", 0.1)}}, "tolerances['trace'] atol='a' must be a non-negative number"),
    ],
)
def test_bad_tolerances_raise_spec_error(kwargs, words):
    with pytest.raises(SpecError) as info:
        resolve_tolerance("trace", **kwargs)
    assert words in str(info.value)


# ------------------------------------------------------------------------------------------ masks


def test_masked_positions_are_left_out_of_the_comparison():
    expected = torch.zeros(2, 3, 4)
    got = expected.clone()
    got[0, 2] = 5.0  # a padding position
    keep = torch.tensor([[True, True, False], [True, True, True]])
    tol = resolve_tolerance("onnx")
    assert compare_outputs({"h": expected}, {"h": got}, tol, keep={"output['h']": keep}).ok
    assert not compare_outputs({"h": expected}, {"h": got}, tol).ok
    got[1, 2] = 5.0  # a valid position still fails, and the index names it
    cmp = compare_outputs({"h": expected}, {"h": got}, tol, keep={"output['h']": keep})
    assert not cmp.ok and "index (1, 2, 0)" in cmp.errors[0].text


def test_unsupported_cache_output_names_use_cache_false():
    class DynamicCache:  # stands in for transformers.cache_utils.DynamicCache, by module and name
        pass

    DynamicCache.__module__ = "transformers.cache_utils"
    with pytest.raises(UnsupportedOutput) as info:
        flatten({"logits": torch.ones(1), "past_key_values": DynamicCache()})
    assert "use_cache=False" in str(info.value) and "output['past_key_values']" in str(info.value)


def test_leaves_are_paired_by_path_not_position():
    """A backend returning eager's dict in another key order is right; one returning other keys is wrong, and
    the message names them (pairing by position would compare 'a' with 'b')."""
    a, b = torch.zeros(2), torch.ones(2)
    assert compare_outputs({"a": a, "b": b}, {"b": b, "a": a}, tol(0.0)).ok
    [err] = compare_outputs({"a": a, "b": b}, {"a": a, "c": b}, tol(0.0)).errors
    assert err.reason == "structure" and "missing output['b']; extra output['c']" in err.text


def test_flat_runtime_outputs_are_paired_by_position():
    from pytest_deploy.compare import Leaves

    a, b = torch.zeros(2), torch.ones(2)
    got = Leaves([("output[0]", a), ("output[1]", b)])
    assert compare_outputs({"a": a, "b": b}, got, tol(0.0)).ok
    assert not compare_outputs({"a": b, "b": a}, got, tol(0.0)).ok


def test_complex_outputs_compare_both_parts():
    expected = torch.tensor([1 + 1j, 2 - 1j], dtype=torch.complex64)
    assert compare_outputs(expected, expected.clone(), tol(1e-6)).ok
    [err] = compare_outputs(expected, expected.conj(), tol(1e-6)).errors  # same real parts, other imaginary ones
    assert err.reason == "values" and err.max_abs == pytest.approx(2.0)


def test_bfloat16_outputs_are_compared_at_their_tolerance():
    expected = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    tolerance = resolve_tolerance("onnx")
    assert compare_outputs(expected, expected + 0.01, tolerance).ok
    assert not compare_outputs(expected, expected + 0.5, tolerance).ok


def test_nested_outputs_follow_pytree_paths_and_walk_dataclasses():
    import dataclasses

    @dataclasses.dataclass
    class Out:
        logits: torch.Tensor
        extra: dict

    leaves = flatten(Out(torch.zeros(1), {"k": [torch.ones(1), None]}))
    assert [p for p, _ in leaves] == ["output.logits", "output.extra['k'][0]", "output.extra['k'][1]"]


def test_flatten_keeps_leaves_that_are_already_flat():
    from pytest_deploy.compare import Leaves

    flat = Leaves([("output[0]", torch.zeros(1)), ("output[1]", torch.ones(2))])
    assert flatten(flat) == list(flat)


@dataclasses.dataclass
class Unkeyed:
    """Registered with pytree as diffusers registers BaseOutput: flatten/unflatten, no flatten_with_keys_fn."""

    sample: object
    extra: object = None


torch.utils._pytree.register_pytree_node(
    Unkeyed, lambda o: ([o.sample, o.extra], None), lambda children, _: Unkeyed(*children)
)


def test_flatten_type_registered_without_key_function_gets_positional_paths():
    out = {"a": Unkeyed(torch.ones(2), (torch.zeros(1), torch.tensor(3.0)))}
    leaves = flatten(out)
    assert [p for p, _ in leaves] == ["output['a'][0]", "output['a'][1][0]", "output['a'][1][1]"]
    assert [v for _, v in leaves] == torch.utils._pytree.tree_leaves(out)  # the exporters' order
    assert compare_outputs(out, out, tol(0.0)).ok
    worse = {"a": Unkeyed(torch.ones(2), (torch.zeros(1), torch.tensor(4.0)))}
    assert [e.path for e in compare_outputs(out, worse, tol(0.1)).errors] == ["output['a'][1][1]"]


class UnkeyedDict(collections.OrderedDict):
    """Registered as diffusers registers its BaseOutput (an OrderedDict): the dict's flatten, no key function."""


torch.utils._pytree.register_pytree_node(
    UnkeyedDict, torch.utils._pytree._dict_flatten,
    lambda values, context: UnkeyedDict(torch.utils._pytree._dict_unflatten(values, context)),
)


def test_mapping_registered_without_key_function_gets_its_keys_as_a_traced_dict_does():
    """A traced diffusers model returns its BaseOutput as a plain dict: the paths must be the same on both sides
    (positional paths on eager's side failed every trace check with 'missing output[0]; extra output['sample']')."""
    eager = UnkeyedDict(sample=torch.ones(2), other=torch.zeros(1))
    assert [p for p, _ in flatten(eager)] == ["output['sample']", "output['other']"]
    traced = {"sample": torch.ones(2), "other": torch.zeros(1)}
    assert compare_outputs(eager, traced, tol(0.0)).ok
    assert [e.path for e in compare_outputs(eager, {**traced, "other": torch.ones(1)}, tol(0.1)).errors] == [
        "output['other']"]


def test_key_paths_match_pytree_where_key_functions_exist():
    from torch.utils._pytree import tree_flatten_with_path

    from pytest_deploy.compare import key_paths

    tree = {"x": [torch.ones(1), Out(torch.zeros(1), (1, None))], "y": (2.0,)}
    assert key_paths(tree) == tree_flatten_with_path(tree)[0]
