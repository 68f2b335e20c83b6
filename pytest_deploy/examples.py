"""The example loop of one check: run the artifact on generated examples, compare each with eager, explain a failure.

An :class:`ExampleRunner` belongs to one check (``CheckContext.example_runner``); a backend reaches it through
``ctx.run_examples(runner)``. Hypothesis generates the examples (the canonical one, the special patterns, the
branch search's finds, then generated ones) and shrinks the first failure within a budget; a failing special
pattern has its dims shrunk here. Each example is run by the backend's runner and by eager PyTorch (the reference)
and compared (:mod:`pytest_deploy.compare`), with the outputs a ``mask()`` input leads compared only where the mask
is valid. Over the examples the eager outputs are watched: all (near) zero fails the check as vacuous. A failure
becomes a :class:`StageError` whose text names the failing input, the errors and the smallest passing tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import isolation
from .agreement import QUANTIZED, Agreement
from .branches import describe_frozen_number, fix_for
from .compare import Comparison, Leaves, compare_outputs, flatten, format_number, paired
from .errors import InternalError, StageError
from .internal import internal_error
from .sources import describe_exception
from .spec import SPECIAL_LABEL, Example
from .tensors import clone_args, is_tensor

#: After the first failing example, at most this many further runs are spent shrinking it.
SHRINK_BUDGET = 150

#: A failing special-pattern example gets at most this many runs to shrink its dims.
DIM_SHRINK_RUNS = 24

#: Outputs whose magnitude never exceeds the check's atol (or this) on any example make a vacuous check.
VACUOUS_FLOOR = 1e-30



@dataclass
class _RunCounts:
    """What run_examples counts while hypothesis runs the examples."""

    runs: int = 0
    failed_keys: set[tuple] = field(default_factory=set)  # _example_key of each failing example
    after_failure: int = 0  # runs since the first failure: the shrink budget spent
    passed: int = 0


@dataclass
class _ReferenceStats:
    """What the eager outputs looked like over the examples (see ExampleRunner._observe_reference)."""

    floats: int = 0  # float outputs seen
    largest: float = 0.0  # the largest float magnitude, and where
    largest_path: str | None = None
    others: bool = False  # a non-empty output that is not floating point
    shapes: dict[tuple, list] = field(default_factory=dict)  # output signature -> the first example's outputs
    compared: int = 0  # examples compared with an earlier one of the same signature
    varies: bool = False  # whether any of them differed
    examples: int = 0


class ExampleFailed(Exception):
    """Raised inside the hypothesis loop; carries the example and what went wrong with it."""

    def __init__(self, example: Example, stage: str, text: str, comparison: Comparison | None = None):
        super().__init__(text)
        self.example = example
        self.stage = stage
        self.text = text
        self.comparison = comparison


class ExampleRunner:
    """The example loop of one check, and what it keeps between examples: the eager outputs' statistics and
    which outputs a mask() input leads."""

    def __init__(self, ctx: Any) -> None:
        #: the check (``check.CheckContext``): its input space, tolerance, stages, result and branch search
        self.ctx = ctx
        #: output path -> index of the mask() input whose dims lead that output (decided on the first example)
        self.masked_paths: dict[str, int] | None = None
        #: what the eager outputs looked like over the examples: the largest float magnitude, whether any changed
        self.reference = _ReferenceStats()
        #: at int8: the agreement gate the examples feed (pytest_deploy.agreement), judged after the loop
        self.agreement: Agreement | None = None

    def run_examples(self, runner: Callable[[tuple], Any], *, reference: Callable[[tuple], Any] | None = None,
                     record: bool = True) -> None:
        """Run ``runner`` on the canonical example and ``examples - 1`` generated ones; compare each with eager.

        Hypothesis generates the examples and shrinks the first failure; the artifact is built once
        by the caller and reused for all. ``reference`` defaults to :meth:`CheckContext.recorded_eager`; with
        ``record`` the branch search runs first and its finds are examples too.
        """
        from hypothesis import HealthCheck, Phase, Verbosity, given, settings
        from hypothesis import example as explicit_example
        from hypothesis import seed as hypothesis_seed
        from hypothesis.errors import Flaky

        ctx = self.ctx
        reference = reference or ctx.recorded_eager
        ctx.runner = runner
        precision = ctx.options.get("precision") or "fp32"
        if precision in QUANTIZED:  # judged by agreement over all the examples, not example by example
            self.agreement = Agreement(ctx.options.get("agreement"), precision)
        found: list[Example] = []
        if record:
            found = ctx.search.branch_search()
        state = _RunCounts()

        def one(ex: Example) -> None:
            key = _example_key(ex)
            if state.failed_keys:
                state.after_failure += 1
                if state.after_failure > SHRINK_BUDGET and key not in state.failed_keys:
                    return  # shrink budget spent: stop exploring, keep the smallest failure found
            state.runs += 1
            try:
                self._run_one(ex, runner, reference)
            except ExampleFailed:
                if key is not None:
                    state.failed_keys.add(key)
                raise
            if not state.failed_keys:
                state.passed += 1

        quantized = self.agreement is not None
        test = given(ctx.space.strategy(representative=quantized))(one)
        # ``examples`` counts every example run: the canonical one, the special patterns every input is
        # guaranteed (as many as half the rest of the budget allows), then generated ones; the branch search's finds come on top.
        # An int8 check's are representative (uniform values): agreement is not promised on constant or extreme inputs
        special = [] if quantized else ctx.space.special_examples((ctx.examples - 1) // 2)
        for ex in reversed([*special, *found]):
            test = explicit_example(ex)(test)
        test = explicit_example(ctx.canonical)(test)
        generated = ctx.examples - 1 - len(special)
        generate = (Phase.generate, Phase.shrink) if generated > 0 else (Phase.shrink,)
        test = settings(
            max_examples=max(1, generated),
            deadline=None,
            database=None,
            derandomize=False,
            suppress_health_check=list(HealthCheck),
            phases=(Phase.explicit, *generate),
            report_multiple_bugs=False,
            print_blob=False,
            verbosity=Verbosity.quiet,
        )(test)
        test = hypothesis_seed(ctx.seed)(test)
        try:
            test()
        except ExampleFailed as failure:
            if failure.example.label == SPECIAL_LABEL:  # explicit examples are not shrunk by hypothesis
                failure = self._shrink_dims(failure, runner, reference)
            ctx.failed_example = failure.example
            ctx.result.examples = state.passed + 1
            stage, text = failure.stage, self._failure_text(failure, shrunk=state.runs > 1)
            if failure.comparison is not None:
                lost = ctx.search.lost_branch_text(failure.example, failure.comparison)
                if lost:
                    stage, text = "branches", lost + "\n" + text
            elif stage == "run" and ctx.freezes_decisions:  # a frozen shape number can break the run itself
                frozen = ctx.search.frozen_shape_numbers(failure.example)
                if frozen:
                    text += "\n" + describe_frozen_number(frozen[0], "the failing input") + f"\n  fix: {fix_for(frozen[0])}"
            from .divergence import locate

            text += locate(ctx, failure.example.args, stage)  # where it broke; never raises
            raise StageError(stage, text, comparison=failure.comparison) from None
        except Flaky as exc:
            bug = next((e for e in getattr(exc, "exceptions", ()) or () if isinstance(e, InternalError)), None)
            if bug is not None:
                raise bug from None
            inner = _first_example_failure(exc)
            text = (
                f"{ctx.backend}: a failure did not reproduce when hypothesis replayed the same input, so the model "
                "or the backend is nondeterministic (dropout left on? randomness in forward?)"
            )
            if inner is not None:
                ctx.failed_example = inner.example
                text += "\n  first failure: " + inner.text.replace("\n", "\n  ")
            raise StageError(inner.stage if inner else "run", text) from None
        finally:
            ctx.result.branches = ctx.analysis.to_json()
            if ctx.result.branches:
                ctx.result.details["branch_summary"] = ctx.analysis.summary()
        ctx.result.examples = state.passed
        self._judge_reference()
        if self.agreement is not None:
            self.agreement.judge(ctx)

    def _shrink_dims(self, failure: ExampleFailed, runner, reference) -> ExampleFailed:
        """A failing special-pattern example with its dims made as small as still fails (each dim in turn,
        by bisection towards its lower bound), its recipes unchanged."""
        ctx = self.ctx
        best = failure
        recipes = failure.example.recipes  # every smaller candidate is built from these too
        assert recipes is not None  # special-pattern examples are built from recipes
        runs = 0
        for name in sorted(ctx.space.dims):
            low, high = ctx.space.dims[name][0], best.example.dims.get(name, 0)
            first = True
            while low < high and runs < DIM_SHRINK_RUNS:
                mid = low if first else (low + high) // 2  # the lower bound first: failures need not be monotonic
                first = False
                candidate = ctx.space.build({**best.example.dims, name: mid}, recipes)
                candidate.label = SPECIAL_LABEL
                runs += 1
                try:
                    self._run_one(candidate, runner, reference)
                except ExampleFailed as smaller:
                    best, high = smaller, mid
                except Exception:
                    low = mid + 1
                else:
                    low = mid + 1
        if best is not failure:
            best.example.label = SPECIAL_LABEL + ", dims shrunk"
        return best

    def _run_one(self, ex: Example, runner, reference) -> None:
        ctx = self.ctx
        try:
            expected = reference(ex.args)
        except StageError as err:
            raise ExampleFailed(ex, err.stage, err.message) from None
        except InternalError:
            raise
        except Exception as exc:  # the reference itself fails: the spec does not fit forward
            internal = internal_error(exc, staged=True)
            if internal is not None:
                raise internal from exc
            raise ExampleFailed(ex, "run", "eager PyTorch (the reference) fails on this input: " + describe_exception(
                exc, "check that inputs= matches forward's arguments (count, dtypes, shapes)")) from None
        try:
            with ctx.stage("run"):
                got = runner(clone_args(ex.args))
        except StageError as err:
            raise ExampleFailed(ex, "run", err.message) from None
        try:
            with ctx.stage("compare"):
                leaves = expected if isinstance(expected, Leaves) else Leaves(flatten(expected))  # flattened once
                keep = self._keep_masks(ex, leaves)
                self._observe_reference(ex, leaves, keep)
                cmp = compare_outputs(leaves, got, ctx.tol, keep=keep)
        except StageError as err:
            raise ExampleFailed(ex, "compare", err.message) from None
        self._update_errors(cmp)
        if self.agreement is not None and all(e.reason == "values" for e in cmp.errors):
            # values beyond the tolerance are recorded, not failed on: the agreement gate judges at the end, on the
            # positions a mask() input marks valid
            self.agreement.add(ex, paired(leaves, got, keep), replay=(leaves, keep))
        elif not cmp.ok:
            raise ExampleFailed(ex, "compare", "", cmp)

    # -- masks and the eager outputs themselves -------------------------------------------------------

    def _keep_masks(self, ex: Example, leaves: Leaves) -> dict[str, Any] | None:
        """For outputs led by a mask() input's dims (decided once, :meth:`_decide_masked`): path -> where the
        mask is valid. None when nothing is masked."""
        from .spec import MaskSpec

        ctx = self.ctx
        masks = [i for i, s in enumerate(ctx.space.specs) if isinstance(s, MaskSpec)]
        if not masks or ctx.compare_masked or ex.specs is None:
            return None
        if self.masked_paths is None:
            self.masked_paths = self._decide_masked(ex, leaves, masks)
        keep = self.masks_for(ex, leaves)
        if keep:
            counts = ctx.result.details.setdefault("masked_positions", {"compared": 0, "left_out": 0})
            values = dict(leaves)
            for path, m in keep.items():
                per = math.prod(values[path].shape[m.dim():])
                counts["compared"] += int(m.sum()) * per
                counts["left_out"] += int((~m).sum()) * per
        return keep or None

    def masks_for(self, ex: Example, leaves: Leaves) -> dict[str, Any]:
        """The padding masks already decided for ``leaves`` on ``ex``: path -> where the mask is valid (counted nowhere:
        a backend's explanation compares again with them)."""
        keep = {}
        for path, value in leaves:
            index = (self.masked_paths or {}).get(path)
            if index is None or not is_tensor(value):
                continue
            m = ex.args[index]
            if tuple(value.shape[:m.dim()]) == tuple(m.shape):
                keep[path] = m.bool()
        return keep

    def _decide_masked(self, ex: Example, leaves: Leaves, masks: list[int]) -> dict[str, int]:
        """Which outputs are per-token: path -> the mask() input whose dims lead it on ``ex`` (the first
        example) and on a probe whose masks have other sizes (:meth:`InputSpace.mask_probe`, run in eager
        PyTorch once per model test). An output whose leading dims equal a mask's on one example only (logits
        of 3 classes beside a mask 3 long) is compared in full; so is every output beside a mask whose last
        dim cannot vary. Notes both in ``details``."""
        ctx = self.ctx
        candidates: dict[str, int] = {}
        for path, value in leaves:
            for i in masks:
                m = ex.args[i]
                if is_tensor(value) and value.dim() >= m.dim() and tuple(value.shape[:m.dim()]) == tuple(m.shape):
                    candidates[path] = i
                    break
        if not candidates:
            return {}
        probe_masks, shapes, error, static = self._mask_probe(ex, sorted(set(candidates.values())))
        names = ctx.space.names

        def name(i: int) -> str:
            return names[i] if i < len(names) else f"input {i}"

        decided: dict[str, int] = {}
        ruled_out: dict[str, str] = {}
        for path, i in candidates.items():
            m_shape = probe_masks.get(i)
            shape = shapes.get(path)
            if shape is None:  # a backend's own copy of an output ("simplified output[...]" for onnx)
                shape = next((s for p, s in shapes.items() if path.endswith(" " + p)), None)
            if i in static:
                ruled_out[path] = f"mask {name(i)!r}: {static[i]}"
            elif error is not None:
                ruled_out[path] = f"eager PyTorch failed on other sizes of mask {name(i)!r}'s dims: {error}"
            elif m_shape is None or shape is None or tuple(shape[:len(m_shape)]) != tuple(m_shape):
                ruled_out[path] = (f"its leading dims do not follow mask {name(i)!r}'s dims: "
                                   f"{_shape_text(shape)} beside mask {_shape_text(m_shape)} on another example")
            else:
                decided[path] = i
        if decided:
            ctx.result.details["masked_outputs"] = {p: name(i) for p, i in decided.items()}
        if ruled_out:
            ctx.result.details["unmasked_outputs"] = ruled_out
        return decided

    def _mask_probe(self, ex: Example, masks: list[int]) -> tuple[dict[int, tuple], dict[str, tuple], str | None,
                                                                   dict[int, str]]:
        """The probe's mask shapes by input position, its eager output shapes by path, the error eager PyTorch
        raised on it (or None), and the masks that cannot vary with the reason; shared by the model test."""
        ctx = self.ctx
        key = (tuple(tuple(ex.args[i].shape) for i in masks), tuple(masks))
        shared = ctx.shared.mask_probes if ctx.shared is not None else {}
        if key not in shared:
            probe, static = ctx.space.mask_probe(ex, masks)
            probe_masks: dict[int, tuple] = {}
            shapes: dict[str, tuple] = {}
            error = None
            if probe is not None:
                probe_masks = {i: tuple(probe.args[i].shape) for i in masks if i not in static}
                try:
                    with isolation.guard("reference", ctx.timeout):
                        out = ctx.eager(probe.args)
                    shapes = {p: tuple(v.shape) for p, v in flatten(out) if is_tensor(v)}
                except StageError:
                    raise
                except Exception as exc:
                    error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
            shared[key] = (probe_masks, shapes, error, static)
            if ctx.shared is not None:
                ctx.count("mask_probe_runs")
        return shared[key]

    def _observe_reference(self, ex: Example, leaves: Leaves, keep) -> None:
        """Track the eager outputs over the examples: their largest float magnitude (a check whose outputs are
        all (near) zero compares nothing) and whether they ever change with the input."""
        ref = self.reference
        ref.examples += 1
        signature = []
        for path, value in leaves:
            if not is_tensor(value):
                continue
            signature.append((path, tuple(value.shape), str(value.dtype)))
            if not value.is_floating_point() or value.numel() == 0:
                ref.others = ref.others or value.numel() > 0
                continue
            shown = value.detach()
            if keep and path in keep:
                valid = keep[path].reshape(*keep[path].shape, *([1] * (shown.dim() - keep[path].dim())))
                shown = torch_where(valid, shown)
            largest = float(shown.abs().nan_to_num(0.0, 0.0, 0.0).max()) if shown.numel() else 0.0
            ref.floats += 1
            if largest >= ref.largest:
                ref.largest, ref.largest_path = largest, path
        key = tuple(signature)
        values = [v for _, v in leaves if is_tensor(v)]
        previous = ref.shapes.get(key)
        if previous is None:
            if len(ref.shapes) < 8:
                ref.shapes[key] = [v.detach().clone() for v in values]
        else:
            ref.compared += 1
            if not all(_equal(a, b) for a, b in zip(previous, values)):
                ref.varies = True

    def _judge_reference(self) -> None:
        """After every example passed: fail a vacuous check, warn about outputs no input changes."""
        ctx = self.ctx
        ref = self.reference
        if not ref.floats or ref.others or ref.examples == 0:
            return
        atol, _ = ctx.tol.float32
        largest = ref.largest
        if largest <= max(atol, VACUOUS_FLOOR) and not ctx.allow_vacuous:
            raise StageError(
                "reference",
                f"vacuous check: eager PyTorch's outputs are (near) zero on every example (largest magnitude "
                f"{format_number(largest)} at {ref.largest_path}, within atol {atol:g} of zero), so any backend "
                "returning zeros would pass and the comparison proves nothing\n"
                "  fix: initialise the weights (a library's default init can let the signal vanish, e.g. "
                "model.apply(init_fn) or a seeded torch.nn.init.normal_ on each weight), or pass "
                "allow_vacuous=True when near-zero outputs are what the model should give")
        if ref.compared and not ref.varies:
            ctx.warn(f"{ctx.backend}: eager outputs were identical for every example ({ref.examples} inputs); "
                     "the model may ignore its inputs (a dead signal), so the comparison proves little")

    def _update_errors(self, cmp: Comparison) -> None:
        r = self.ctx.result
        r.max_abs_error = cmp.max_abs if r.max_abs_error is None else max(r.max_abs_error, cmp.max_abs)
        r.max_rel_error = cmp.max_rel if r.max_rel_error is None else max(r.max_rel_error, cmp.max_rel)

    def _failure_text(self, failure: ExampleFailed, shrunk: bool) -> str:
        ctx = self.ctx
        label = failure.example.label
        which = "failing input" + (" (shrunk by hypothesis)" if shrunk and label == "generated"
                                   else f" ({label})" if label != "generated" else "")
        lines = []
        if failure.comparison is not None:
            cmp = failure.comparison
            lines.append("outputs differ from eager PyTorch")
            for err in cmp.errors[:5]:
                lines.append("  " + err.text)
                if err.reason in ("values", "nan") and err.needed_atol is not None:
                    atol, rtol = ctx.tol.for_dtype(err.dtype)
                    # rounded up: a tolerance copied from the message must pass
                    need_atol = format_number(err.needed_atol, round_up=True)
                    need_rtol = format_number(err.needed_rtol, round_up=True)
                    lines.append(
                        f"  max abs error {format_number(err.max_abs)}, max rel error {format_number(err.max_rel)}; "
                        f"smallest tolerance that passes: atol={need_atol} (at rtol {rtol:g})"
                        + (f" or rtol={need_rtol} (at atol {atol:g})" if err.needed_rtol is not None
                           and not math.isinf(err.needed_rtol) else "")
                    )
            if len(cmp.errors) > 5:
                lines.append(f"  ... and {len(cmp.errors) - 5} more outputs differ")
            worst, here = ctx.result.max_abs_error, cmp.max_abs
            if worst is not None and format_number(worst) != format_number(here):
                # the reports' figure is the worst over the run; this input (often shrunk) can differ from it
                lines.append(f"  the errors above are this input's; the worst over every example run is max abs "
                             f"error {format_number(worst)}, the figure the reports show")
        else:
            lines.append(failure.text)
        lines.append(f"  {which}:")
        lines.extend("    " + ln for ln in failure.example.describe(ctx.space.names).splitlines())
        lines.append(f"  reproduce: {ctx.options.get('reproduce', f'seed={ctx.seed}')}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ helpers


def _equal(a, b) -> bool:
    import torch

    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a.detach(), b.detach()))


def torch_where(valid, value):
    """``value`` with the positions where ``valid`` is False set to zero."""
    import torch

    return torch.where(valid, value, torch.zeros((), dtype=value.dtype))


def _example_key(ex: Example):
    if ex.recipes is None:
        return None
    return (tuple(sorted(ex.dims.items())), ex.recipes)


def _first_example_failure(exc: BaseException) -> ExampleFailed | None:
    for sub in getattr(exc, "exceptions", ()) or ():
        if isinstance(sub, ExampleFailed):
            return sub
    return exc.__cause__ if isinstance(exc.__cause__, ExampleFailed) else None


def _shape_text(shape: tuple | None) -> str:
    return "(" + ", ".join(map(str, shape)) + ")" if shape is not None else "(no such output)"
