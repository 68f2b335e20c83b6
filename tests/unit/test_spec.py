"""Unit tests for pytest_deploy.spec and pytest_deploy.generate: tensor() declarations, dims, input spaces and
example generation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_deploy.errors import SpecError
from pytest_deploy.generate import BOOL_PATTERNS, FLOAT_PATTERNS, INT_PATTERNS, InputRecipe, make_tensor
from pytest_deploy.spec import Example, InputSpace, TensorSpec, mask, normalize_dims, tensor

# ------------------------------------------------------------------------------------ tensor()


def test_tensor_keeps_shape_dtype_and_range():
    spec = tensor("batch", 3, 32, dtype=torch.float64, low=-2.0, high=5)
    assert isinstance(spec, TensorSpec)
    assert spec.shape == ("batch", 3, 32)
    assert spec.torch_dtype == torch.float64
    assert spec.bounds() == (-2.0, 5)
    assert spec.dim_names() == ["batch"]


def test_tensor_accepts_one_shape_sequence():
    assert tensor([2, "seq"]).shape == (2, "seq")
    assert tensor((4,)).shape == (4,)


def test_tensor_without_dims_is_a_scalar():
    spec = tensor()
    assert spec.shape == ()
    assert make_tensor(spec, {}, InputRecipe(0, "uniform")).shape == ()


@pytest.mark.parametrize(
    "dtype, expected",
    [(None, (-1.0, 1.0)), (torch.float16, (-1.0, 1.0)), (torch.int64, (0, 10)), (torch.int8, (0, 10)), (torch.bool, (0, 2))],
)
def test_default_value_ranges(dtype, expected):
    assert tensor(2, dtype=dtype).bounds() == expected


def test_describe_shows_dtype_shape_and_range():
    assert tensor("batch", 3).describe() == "float32[batch, 3] in [-1, 1]"
    assert tensor(4, dtype=torch.int64, low=2, high=7).describe() == "int64[4] in [2, 7)"
    assert tensor(2, dtype=torch.bool).describe() == "bool[2]"
    assert repr(tensor(5)) == "tensor(float32[5] in [-1, 1])"


@pytest.mark.parametrize("bad, typename", [(3.0, "float"), (True, "bool"), (None, "NoneType"), ((2,), "tuple")])
def test_tensor_rejects_bad_dim_types(bad, typename):
    with pytest.raises(SpecError) as info:
        tensor("batch", bad)
    msg = str(info.value)
    assert f"dim 1 is {bad!r} ({typename})" in msg
    assert "must be an int or a dim name" in msg
    assert "dims=" in msg


def test_tensor_rejects_negative_sizes():
    with pytest.raises(SpecError, match=r"dim 1 is -1; sizes must be >= 0"):
        tensor(2, -1)


def test_tensor_allows_zero_size():
    assert make_tensor(tensor(0, 3), {}, InputRecipe(0, "uniform")).shape == (0, 3)


@pytest.mark.parametrize("name", ["2x", "batch size", "", "a-b"])
def test_tensor_rejects_non_identifier_dim_names(name):
    with pytest.raises(SpecError, match="is not an identifier"):
        tensor(name, 3)


@pytest.mark.parametrize("dtype", ["float32", float, 5])
def test_tensor_rejects_non_torch_dtype(dtype):
    with pytest.raises(SpecError, match=r"is not a torch\.dtype; pass e\.g\. dtype=torch\.int64"):
        tensor(2, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_tensor_rejects_complex_dtype(dtype):
    with pytest.raises(SpecError, match="is complex"):
        tensor(2, dtype=dtype)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"low": 5, "high": 5},  # [5, 5) holds no integer
        {"low": 20},  # default high is 10
        {"low": 3, "high": 1},
    ],
)
def test_tensor_rejects_empty_integer_range(kwargs):
    with pytest.raises(SpecError) as info:
        tensor(2, dtype=torch.int64, **kwargs)
    assert "empty value range" in str(info.value)
    assert "[low, high)" in str(info.value)


def test_tensor_rejects_inverted_float_range_but_allows_a_point():
    with pytest.raises(SpecError, match="empty value range low=1.0, high=0.0"):
        tensor(2, low=1.0, high=0.0)
    point = tensor(3, low=0.5, high=0.5)
    assert torch.all(make_tensor(point, {}, InputRecipe(1, "uniform")) == 0.5)


@pytest.mark.parametrize("which", ["low", "high"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "0", True])
def test_tensor_rejects_bounds_that_are_not_finite_numbers(which, value):
    with pytest.raises(SpecError, match=rf"{which}=.* must be a finite number"):
        tensor(2, **{which: value})


def test_bool_tensor_ignores_range_check():
    # bools are either value; low/high do not make their range empty
    assert tensor(2, dtype=torch.bool, low=1, high=1).bounds() == (0, 2)


# ------------------------------------------------------------------------------ normalize_dims


def test_normalize_dims_int_and_pair():
    assert normalize_dims(None) == {}
    assert normalize_dims({}) == {}
    assert normalize_dims({"seq": 16, "batch": (1, 8), "n": [0, 3]}) == {"seq": (16, 16), "batch": (1, 8), "n": (0, 3)}


def test_normalize_dims_min_greater_than_max_suggests_the_swap():
    with pytest.raises(SpecError) as info:
        normalize_dims({"batch": (8, 1)})
    assert "dims['batch']=(8, 1): min > max; write (1, 8)" in str(info.value)


@pytest.mark.parametrize("bound", [-1, (-2, 4)])
def test_normalize_dims_rejects_negative(bound):
    with pytest.raises(SpecError, match="sizes must be >= 0"):
        normalize_dims({"batch": bound})


@pytest.mark.parametrize("bound", [2.5, "4", (1, 2.0), (1, 2, 3), (1,), True, (True, 4), None])
def test_normalize_dims_rejects_bad_bound_types(bound):
    with pytest.raises(SpecError, match=r"must be an int or a \(min, max\) pair of ints"):
        normalize_dims({"batch": bound})


@pytest.mark.parametrize("key", ["1x", "two words", 3])
def test_normalize_dims_rejects_bad_names(key):
    with pytest.raises(SpecError, match="is not a dim name"):
        normalize_dims({key: 1})


def test_normalize_dims_rejects_non_mapping():
    with pytest.raises(SpecError, match="must be a dict of name -> \\(min, max\\)"):
        normalize_dims([("batch", 1)])


# ----------------------------------------------------------------------- InputSpace.resolve


def test_resolve_without_inputs():
    with pytest.raises(SpecError, match="no inputs declared"):
        InputSpace.resolve(None, None)


def test_resolve_unbound_dim_names_the_input():
    with pytest.raises(SpecError) as info:
        InputSpace.resolve([tensor(4), tensor("batch", 3)], {})
    msg = str(info.value)
    assert "dim 'batch'" in msg
    assert "inputs[1] float32[batch, 3]" in msg
    assert "inputs[0]" not in msg
    assert "dims={'batch': (min, max)}" in msg


def test_resolve_unused_dims():
    with pytest.raises(SpecError, match="dims 'seq' are not used by any input"):
        InputSpace.resolve([tensor("batch", 3)], {"batch": (1, 2), "seq": (1, 4)})


def test_resolve_strategy_with_dims():
    strategy = st.just((torch.zeros(2),))
    with pytest.raises(SpecError, match="cannot be combined with a hypothesis strategy"):
        InputSpace.resolve(strategy, {"batch": (1, 2)})


def test_resolve_strategy_inside_the_list():
    with pytest.raises(SpecError, match=r"inputs\[1\] is a hypothesis strategy"):
        InputSpace.resolve([tensor(2), st.just(torch.zeros(2))], None)


@pytest.mark.parametrize("bad, typename", [(3.5, "float"), ("x", "str"), ([1, 2], "list")])
def test_resolve_rejects_non_tensor_inputs(bad, typename):
    with pytest.raises(SpecError) as info:
        InputSpace.resolve([tensor(2), bad], None)
    assert f"inputs[1] is {typename}" in str(info.value)
    assert "each input must be tensor(...)" in str(info.value)


def test_resolve_refuses_too_large_examples_before_allocating():
    # 10**12 * 1024 float32 elements could never be allocated: a SpecError proves nothing was
    with pytest.raises(SpecError) as info:
        InputSpace.resolve([tensor("n", 1024)], {"n": (1, 10**12)})
    assert "GiB" in str(info.value)
    assert "lower the dims' upper bounds" in str(info.value)


def test_resolve_accepts_examples_just_under_the_limit():
    space = InputSpace.resolve([tensor("n", 1024, 1024, dtype=torch.uint8)], {"n": (1, 1024)})  # exactly 1 GiB
    assert space.dims == {"n": (1, 1024)}


def test_resolve_checks_returned_example_count():
    with pytest.raises(SpecError, match=r"returned 1 example input\(s\) but inputs= declares 2"):
        InputSpace.resolve([tensor(2), tensor(3)], None, example_inputs=torch.zeros(2))


def test_resolve_specs_and_names():
    space = InputSpace.resolve(tensor("batch", 3), {"batch": (1, 4)}, names=["x"])
    assert space.specs == (tensor("batch", 3),)
    assert space.arity == 1
    assert space.names == ["x"]
    assert space.given == ()
    assert "batch in [1, 4]" in space.describe()


# ------------------------------------------------------------------------- concrete tensors


def test_concrete_float_tensor_keeps_shape_dtype_and_range():
    t = torch.tensor([[0.5, -2.0, 3.0]], dtype=torch.float64)
    space = InputSpace.resolve([t], None)
    (spec,) = space.specs
    assert spec.shape == (1, 3)
    assert spec.torch_dtype == torch.float64
    assert spec.bounds() == (-2.0, 3.0)
    assert space.given == (t,)
    assert space.canonical().args[0] is t
    assert space.canonical().label == "example given by the test"


def test_concrete_int_and_bool_tensors():
    ints = torch.tensor([1, 5, 3], dtype=torch.int32)
    flags = torch.tensor([True, False])
    space = InputSpace.resolve([ints, flags], None)
    assert space.specs[0].bounds() == (1, 6)  # [min, max + 1): max itself stays reachable
    assert space.specs[0].torch_dtype == torch.int32
    assert space.specs[1].torch_dtype == torch.bool
    made = make_tensor(space.specs[0], {}, InputRecipe(3, "uniform"))
    assert made.dtype == torch.int32 and made.shape == (3,)
    assert made.min() >= 1 and made.max() <= 5


def test_constant_float_tensor_gets_a_nonempty_range():
    spec = InputSpace.resolve([torch.full((2,), 4.0)], None).specs[0]
    assert spec.bounds() == (3.0, 5.0)


def test_example_returned_by_the_test_is_used_when_inputs_omitted():
    example = (torch.zeros(2, 3), torch.ones(4, dtype=torch.int64))
    space = InputSpace.resolve(None, None, example_inputs=example)
    assert [s.shape for s in space.specs] == [(2, 3), (4,)]
    assert space.given == example


@settings(max_examples=15, deadline=None, database=None)
@given(data=st.data())
def test_examples_from_concrete_tensors_keep_shape_and_range(data):
    t = torch.tensor([[0.5, -2.0], [3.0, 1.0]])
    ex = data.draw(InputSpace.resolve([t], None).strategy())
    (arg,) = ex.args
    assert arg.shape == (2, 2) and arg.dtype == torch.float32
    assert arg.min() >= -2.0 and arg.max() <= 3.0


# ------------------------------------------------------------------------------- opt_dims


@pytest.mark.parametrize(
    "specs, dims",
    [
        ([tensor("batch", 3, 32, 32)], {"batch": (1, 8)}),
        ([tensor("a", "b", 2)], {"a": (1, 4), "b": (1, 4)}),
        ([tensor("a", 2, 3, 4), tensor("b", 5)], {"a": (0, 100), "b": (2, 8)}),
        ([tensor("a", "b", "c")], {"a": (2, 3), "b": (2, 3), "c": (2, 4)}),
    ],
)
def test_opt_dims_avoid_0_1_static_sizes_and_each_other(specs, dims):
    space = InputSpace.resolve(specs, dims)
    opt = space.opt_dims()
    static = {d for s in specs for d in s.shape if isinstance(d, int)}
    assert set(opt) == set(dims)
    for name, value in opt.items():
        lo, hi = dims[name]
        assert lo <= value <= hi
        assert value >= 2
        assert value not in static
    assert len(set(opt.values())) == len(opt)


def test_opt_dims_stay_within_tight_bounds():
    space = InputSpace.resolve([tensor("a", "b", "c")], {"a": (0, 1), "b": 5, "c": (1, 1)})
    assert space.opt_dims() == {"a": 1, "b": 5, "c": 1}


def test_opt_dims_fall_back_within_bounds_when_every_size_is_taken():
    space = InputSpace.resolve([tensor("b", 2, 3)], {"b": (2, 3)})
    assert space.opt_dims()["b"] in (2, 3)


def test_canonical_example_uses_opt_dims_seed_0_uniform():
    space = InputSpace.resolve([tensor("batch", 3)], {"batch": (1, 8)})
    ex = space.canonical()
    assert ex.dims == space.opt_dims()
    assert ex.args[0].shape == (space.opt_dims()["batch"], 3)
    assert ex.recipes == (InputRecipe(0, "uniform"),)


# ----------------------------------------------------------------------------- make_tensor


def test_make_tensor_is_deterministic():
    spec = tensor("n", 7)
    a = make_tensor(spec, {"n": 5}, InputRecipe(42, "uniform"))
    b = make_tensor(spec, {"n": 5}, InputRecipe(42, "uniform"))
    c = make_tensor(spec, {"n": 5}, InputRecipe(43, "uniform"))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("pattern", FLOAT_PATTERNS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("low, high", [(-3.0, 0.5), (0.25, 2.0), (-1.0, 1.0)])
def test_make_tensor_float_values_lie_in_closed_range(pattern, dtype, low, high):
    spec = tensor(20, 50, dtype=dtype, low=low, high=high)
    t = make_tensor(spec, {}, InputRecipe(7, pattern))
    assert t.shape == (20, 50) and t.dtype == dtype
    assert not torch.isnan(t).any()
    assert t.min().item() >= low and t.max().item() <= high
    assert torch.equal(t, make_tensor(spec, {}, InputRecipe(7, pattern)))


@pytest.mark.parametrize("pattern, near", [("low", 0.25), ("high", 2.0), ("zeros", 0.25)])
def test_make_tensor_float_end_patterns_stay_near_their_end_but_vary(pattern, near):
    """low/high/zeros lie in the tenth of the range at that end (zeros: near the point of the range closest
    to 0), and are never constant: a zero-variance input is a degenerate case nobody asked for."""
    t = make_tensor(tensor(1000, low=0.25, high=2.0), {}, InputRecipe(0, pattern))
    assert (t - near).abs().max().item() <= 0.1 * (2.0 - 0.25) + 1e-6
    assert t.std().item() > 0
    assert t.min().item() >= 0.25 and t.max().item() <= 2.0


@pytest.mark.parametrize("pattern", FLOAT_PATTERNS)
def test_no_float_pattern_is_constant(pattern):
    t = make_tensor(tensor(64, 64), {}, InputRecipe(3, pattern))
    assert t.unique().numel() > 1


def test_make_tensor_float_extremes_hit_both_bounds():
    t = make_tensor(tensor(200, low=-3.0, high=0.5), {}, InputRecipe(1, "extremes"))
    assert set(t.tolist()) == {-3.0, 0.5}


def test_make_tensor_float_sparse_is_mostly_zero():
    t = make_tensor(tensor(1000), {}, InputRecipe(1, "sparse"))
    assert (t == 0).sum() > 700


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int8, torch.uint8])
def test_make_tensor_int_uniform_is_half_open(dtype):
    low, high = (2, 7) if dtype == torch.uint8 else (-2, 3)
    spec = tensor(2000, dtype=dtype, low=low, high=high)
    t = make_tensor(spec, {}, InputRecipe(5, "uniform"))
    assert t.dtype == dtype
    assert set(t.unique().tolist()) == set(range(low, high))


@pytest.mark.parametrize("pattern, allowed", [("low", {-2, -1}), ("high", {1, 2})])
def test_make_tensor_int_low_high_patterns_keep_two_values_at_their_end(pattern, allowed):
    t = make_tensor(tensor(50, dtype=torch.int64, low=-2, high=3), {}, InputRecipe(0, pattern))
    assert set(t.tolist()) == allowed
    assert set(INT_PATTERNS) >= {"uniform", pattern}


def test_make_tensor_int_low_pattern_spans_a_tenth_of_a_wide_range():
    t = make_tensor(tensor(2000, dtype=torch.int64, low=0, high=1000), {}, InputRecipe(0, "low"))
    assert t.min().item() == 0 and t.max().item() == 99


def test_make_tensor_bool_patterns():
    spec = tensor(1000, dtype=torch.bool)
    uniform = make_tensor(spec, {}, InputRecipe(0, "uniform"))
    assert uniform.dtype == torch.bool
    assert set(uniform.tolist()) == {True, False}
    assert not make_tensor(spec, {}, InputRecipe(0, "false")).any()
    assert make_tensor(spec, {}, InputRecipe(0, "true")).all()
    assert BOOL_PATTERNS[0] == "uniform"


# --------------------------------------------------------------------- hypothesis strategy

_SPACE = InputSpace.resolve(
    [
        tensor("batch", 3),
        tensor("batch", "seq", dtype=torch.int64, low=-1, high=4),
        tensor(2, "seq", dtype=torch.bool),
    ],
    {"batch": (1, 4), "seq": (2, 6)},
)


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(ex=_SPACE.strategy())
def test_strategy_respects_dims_and_shares_them_across_inputs(ex):
    assert isinstance(ex, Example)
    batch, seq = ex.dims["batch"], ex.dims["seq"]
    assert 1 <= batch <= 4 and 2 <= seq <= 6
    x, ids, mask = ex.args
    assert x.shape == (batch, 3) and x.dtype == torch.float32
    assert ids.shape == (batch, seq) and ids.dtype == torch.int64
    assert mask.shape == (2, seq) and mask.dtype == torch.bool
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert ids.min() >= -1 and ids.max() <= 3
    assert ex.recipes[0].pattern in FLOAT_PATTERNS
    assert ex.recipes[1].pattern in INT_PATTERNS
    assert ex.recipes[2].pattern in BOOL_PATTERNS
    # the recipe makes the same tensors again
    again = _SPACE.build(ex.dims, ex.recipes)
    assert all(torch.equal(a, b) for a, b in zip(ex.args, again.args))


def test_strategy_override_is_used_as_is():
    space = InputSpace.resolve(st.just((torch.ones(2), torch.zeros(3))), None)
    assert space.arity is None
    ex = space.canonical()
    assert [tuple(a.shape) for a in ex.args] == [(2,), (3,)]
    assert ex.label == "minimal example of the inputs strategy"


# ---------------------------------------------------------------------------- describe


def test_example_describe_mentions_dtype_shape_pattern_seed():
    space = InputSpace.resolve(
        [tensor("batch", 3), tensor(4, dtype=torch.int64)], {"batch": (1, 8)}
    )
    ex = space.build({"batch": 2}, (InputRecipe(7, "extremes"), InputRecipe(11, "uniform")))
    text = ex.describe(["x", "ids"])
    lines = text.splitlines()
    assert lines[0].startswith("x: float32[2, 3] range [")
    assert "(pattern extremes in [-1, 1], seed 7)" in lines[0]
    assert lines[1].startswith("ids: int64[4] range [")
    assert "(pattern uniform in [0, 10), seed 11)" in lines[1]
    assert lines[2] == "dims: batch=2"


def test_example_describe_without_recipe_uses_label_and_default_names():
    ex = Example((torch.zeros(2), torch.tensor([True, False, True])), label="example given by the test")
    assert ex.describe() == (
        "input 0: float32[2] range [0, 0] (example given by the test)\n"
        "input 1: bool[3] 2 of 3 true (example given by the test)"
    )


def test_example_clone_args_copies_tensors():
    t = torch.zeros(2)
    ex = Example((t, 3))
    cloned = ex.clone_args()
    cloned[0].add_(1)
    assert t.sum() == 0 and cloned[1] == 3


# ------------------------------------------------------------------------------------- mask()


def _rows(t):
    return list(t.reshape(-1, t.shape[-1]).tolist())


@pytest.mark.parametrize("padding", ["right", "left", "random"])
@pytest.mark.parametrize("pattern", ["full", "uniform", "min"])
def test_mask_rows_hold_at_least_min_valid_in_the_declared_layout(padding, pattern):
    spec = mask("batch", "seq", padding=padding, min_valid=3)
    t = make_tensor(spec, {"batch": 64, "seq": 9}, InputRecipe(4, pattern))
    assert t.dtype == torch.int64 and t.shape == (64, 9)
    assert set(t.unique().tolist()) <= {0, 1}
    lengths = t.sum(-1)
    assert lengths.min().item() >= 3
    if pattern == "full":
        assert lengths.tolist() == [9] * 64
    if pattern == "min":
        assert lengths.tolist() == [3] * 64
    if pattern == "uniform":
        assert lengths.unique().numel() > 3  # lengths vary row to row
    for row in _rows(t):
        n = sum(row)
        if padding == "right":
            assert row == [1] * n + [0] * (9 - n)
        elif padding == "left":
            assert row == [0] * (9 - n) + [1] * n


def test_mask_random_layout_is_not_always_contiguous():
    t = make_tensor(mask(64, 12, padding="random"), {}, InputRecipe(1, "uniform"))
    contiguous = [row == sorted(row, reverse=True) for row in _rows(t)]
    assert not all(contiguous)


def test_mask_bool_dtype_and_description():
    spec = mask("batch", "seq", dtype=torch.bool, padding="left", min_valid=2)
    assert make_tensor(spec, {"batch": 2, "seq": 4}, InputRecipe(0, "uniform")).dtype == torch.bool
    assert spec.describe() == "mask bool[batch, seq] left-padded, >= 2 valid"
    assert spec.bounds() == (0, 2)


@pytest.mark.parametrize("kwargs, words", [
    ({"padding": "middle"}, "padding='middle'; use one of 'right', 'left', 'random'"),
    ({"min_valid": -1}, "min_valid=-1 must be an int >= 0"),
    ({"min_valid": 1.5}, "min_valid=1.5 must be an int >= 0"),
    ({"dtype": torch.float32}, "is a float type"),
])
def test_mask_rejects_bad_arguments(kwargs, words):
    with pytest.raises(SpecError) as info:
        mask("batch", "seq", **kwargs)
    assert words in str(info.value)


def test_mask_rejects_static_sizes_it_cannot_fill():
    with pytest.raises(SpecError, match="has size 0"):
        mask(2, 0)
    with pytest.raises(SpecError, match=r"min_valid=5 is larger than the last dim \(4\)"):
        mask(2, 4, min_valid=5)
    with pytest.raises(SpecError, match="at least one dim"):
        mask()


def test_resolve_rejects_mask_dims_that_can_be_zero_or_shorter_than_min_valid():
    with pytest.raises(SpecError) as info:
        InputSpace.resolve([mask("batch", "seq")], {"batch": (1, 2), "seq": (0, 8)})
    assert "dim 'seq' can be 0" in str(info.value) and "dims={'seq': (1, ...)}" in str(info.value)
    with pytest.raises(SpecError) as info:
        InputSpace.resolve([mask("batch", "seq", min_valid=4)], {"batch": (1, 2), "seq": (2, 8)})
    assert "min_valid=4 is larger than 'seq''s lower bound 2" in str(info.value)


def test_mask_examples_always_include_full_and_min_valid_lengths():
    space = InputSpace.resolve([tensor("batch", "seq", dtype=torch.int64, low=0, high=50), mask("batch", "seq", min_valid=2)],
                               {"batch": (1, 4), "seq": (2, 16)})
    special = space.special_examples(limit=19)
    patterns = [ex.recipes[1].pattern for ex in special]
    assert patterns[:2] == ["full", "min"]
    full, short = special[0].args[1], special[1].args[1]
    assert full.all()
    assert short.sum(-1).tolist() == [2] * short.shape[0]
    assert short.shape[-1] == 16  # the shortest rows come at the longest sequence, where they mean something
    assert "valid lengths [2" in special[1].describe(["ids", "attention_mask"])


def test_mask_canonical_example_is_padded():
    space = InputSpace.resolve([mask("batch", "seq")], {"batch": (2, 4), "seq": (4, 16)})
    canonical = space.canonical().args[0]
    assert not canonical.all()  # the artifact is built from an input whose mask is used


def test_mask_probe_gives_every_varying_mask_dim_another_size_and_refuses_static_masks():
    space = InputSpace.resolve([tensor("batch", "seq", 3), mask("batch", "seq"), mask("batch", 3)],
                               {"batch": (1, 4), "seq": (2, 16)})
    first = space.canonical()
    probe, static = space.mask_probe(first, [1, 2])
    assert static == {2: "its last dim 3 cannot vary"}
    assert probe is not None and probe.recipes == first.recipes
    old, new = first.args[1].shape, probe.args[1].shape
    assert new[0] != old[0] and new[1] != old[1]
    assert len({new[0], new[1], 3}) == 3  # no size another dim (or a static size) has: no coincidence
    assert probe.args[0].shape[:2] == new  # the other inputs follow the dims they share
    # a mask whose padding dim is bound to one size cannot vary either: nothing to probe
    fixed = InputSpace.resolve([mask("batch", "seq")], {"batch": (1, 4), "seq": 5})
    probe, static = fixed.mask_probe(fixed.canonical(), [0])
    assert probe is None and static == {0: "its last dim 'seq' (bound to 5) cannot vary"}


# -------------------------------------------------------------------------- bounds naming a dim


def test_integer_bound_may_name_a_dim_and_follows_it():
    space = InputSpace.resolve([tensor("batch", "seq"), tensor("batch", dtype=torch.int64, low=0, high="seq")],
                               {"batch": (1, 64), "seq": (1, 5)})
    for seq in (1, 3, 5):
        ex = space.build({"batch": 64, "seq": seq}, [InputRecipe(1, "uniform"), InputRecipe(2, "uniform")])
        positions = ex.args[1]
        assert positions.min().item() >= 0 and positions.max().item() < seq
    assert space.specs[1].describe() == "int64[batch] in [0, seq)"
    assert "in [0, 5)" in space.build({"batch": 2, "seq": 5}, [InputRecipe(0, "uniform")] * 2).describe()


def test_bound_naming_an_unknown_dim_fails_with_the_fix():
    with pytest.raises(SpecError) as info:
        InputSpace.resolve([tensor("batch", dtype=torch.int64, high="length")], {"batch": (1, 4)})
    msg = str(info.value)
    assert "the bound 'length' is not a dim" in msg and "dims={'length': (min, max)}" in msg


def test_bound_naming_a_dim_that_leaves_no_integer_fails():
    with pytest.raises(SpecError, match=r"at seq=0 the value range \[0, 0\) holds no integer"):
        InputSpace.resolve([tensor("seq"), tensor(2, dtype=torch.int64, high="seq")], {"seq": (0, 4)})


def test_float_bound_cannot_name_a_dim():
    with pytest.raises(SpecError, match="only integer tensors can take as a bound"):
        tensor(3, high="seq")


def test_a_dim_used_only_as_a_bound_counts_as_used():
    space = InputSpace.resolve([tensor(4, dtype=torch.int64, high="n")], {"n": (1, 9)})
    assert space.dims == {"n": (1, 9)}


# ------------------------------------------------------------------------------- dict inputs


def test_dict_inputs_are_keywords_in_forward_order():
    space = InputSpace.resolve({"attention_mask": mask("batch", "seq"), "input_ids": tensor("batch", "seq", dtype=torch.int64)},
                               {"batch": (1, 2), "seq": (1, 4)}, parameters=["input_ids", "attention_mask", "labels"])
    assert space.keywords and space.names == ["input_ids", "attention_mask"]
    seen = {}
    space.call(lambda **kw: seen.update(kw), space.canonical().args)
    assert list(seen) == ["input_ids", "attention_mask"] and seen["attention_mask"].dtype == torch.int64
    assert space.split((1, 2)) == ((), {"input_ids": 1, "attention_mask": 2})


def test_dict_input_naming_no_parameter_of_forward_fails_with_the_fix():
    with pytest.raises(SpecError) as info:
        InputSpace.resolve({"input_id": tensor(2, dtype=torch.int64)}, None, parameters=["input_ids", "attention_mask"])
    msg = str(info.value)
    assert "'input_id'" in msg and "its parameters: input_ids, attention_mask" in msg


def test_dict_inputs_keep_their_order_when_forward_takes_kwargs():
    space = InputSpace.resolve({"b": tensor(2), "a": tensor(2)}, None, parameters=None)
    assert space.names == ["b", "a"]


# ------------------------------------------------------------------------ special patterns


def test_special_examples_give_every_input_each_special_pattern():
    space = InputSpace.resolve([tensor("n"), tensor("n", dtype=torch.int64), tensor("n", dtype=torch.bool)], {"n": (1, 8)})
    special = space.special_examples(limit=19)
    assert len(special) == len(set(FLOAT_PATTERNS) - {"uniform"})
    floats = {ex.recipes[0].pattern for ex in special}
    assert floats == set(FLOAT_PATTERNS) - {"uniform"}
    assert {ex.recipes[1].pattern for ex in special} >= {"low", "high"}
    assert {ex.recipes[2].pattern for ex in special} >= {"false", "true"}


def test_special_examples_respect_the_budget():
    space = InputSpace.resolve([tensor("n")], {"n": (1, 8)})
    assert len(space.special_examples(limit=2)) == 2
    assert space.special_examples(limit=0) == []
