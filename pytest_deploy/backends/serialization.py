"""Saving the model itself: ``state_dict``, whole-module ``pickle``, and the training ``checkpoint``."""

from __future__ import annotations

import copy
import pickletools
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import SpecError, StageError
from .base import Backend

_SAFE_MODULE_PREFIXES = ("torch", "collections", "builtins", "__builtin__", "_codecs", "copyreg", "numpy")


# --------------------------------------------------------------------- state outside state_dict


def state_outside_state_dict(original, fresh) -> list[str]:
    """Tensors a ``state_dict`` round trip does not carry, where original and fresh model differ:
    non-persistent buffers and plain tensor attributes. One line per tensor."""
    import torch

    saved = set(original.state_dict().keys())
    fresh_modules = dict(fresh.named_modules())
    found = []
    for mod_name, module in original.named_modules():
        other = fresh_modules.get(mod_name)
        if other is None:
            continue
        prefix = f"{mod_name}." if mod_name else ""
        for name, buf in module.named_buffers(recurse=False):
            if prefix + name in saved:
                continue
            twin = getattr(other, name, None)
            if not (isinstance(twin, torch.Tensor) and twin.shape == buf.shape and torch.equal(twin, buf)):
                found.append(f"non-persistent buffer '{prefix}{name}' (register_buffer(..., persistent=False)) "
                             "is not in the state_dict and differs in the fresh model")
        for name, value in vars(module).items():
            if name.startswith("_") or not isinstance(value, torch.Tensor):
                continue
            twin = getattr(other, name, None)
            if not (isinstance(twin, torch.Tensor) and twin.shape == value.shape and torch.equal(twin, value)):
                found.append(f"plain tensor attribute '{prefix}{name}' (not a parameter or buffer) is not in the "
                             "state_dict and differs in the fresh model")
    return found


def _with_diagnosis(run: Callable[[], None], diagnosis: list[str], fix: str) -> None:
    try:
        run()
    except StageError as err:
        if diagnosis and err.stage == "compare":
            err.message += "\n  likely cause:\n" + "\n".join(f"    {d}" for d in diagnosis) + f"\n  fix: {fix}"
        raise


# ------------------------------------------------------------------------------------ state_dict


class StateDictBackend(Backend):
    name = "state_dict"
    description = "torch.save(model.state_dict()) → fresh model from the factory → load_state_dict(strict=True)"

    def build(self, ctx):
        import torch

        path = ctx.path("state_dict.pt")
        with ctx.stage("save"):
            torch.save(ctx.model.state_dict(), path)
        with ctx.stage("load", "the fresh model from the factory must have the same parameter and buffer names"):
            fresh = ctx.fresh_model()
            fresh.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"), strict=True)
        diagnosis = state_outside_state_dict(ctx.model, fresh)
        ctx.note("not_in_state_dict", diagnosis)
        return lambda args: ctx.call(fresh, args)

    def verify(self, ctx):
        # the fresh model lives as long as the check's runner, not on this backend object (one per session):
        # a passing check leaves no model copy behind
        runner = self.build(ctx)
        _with_diagnosis(lambda: ctx.run_examples(runner), ctx.result.details.get("not_in_state_dict") or [],
                        "register the buffer with persistent=True (or as a parameter), or recompute it in __init__")


# ---------------------------------------------------------------------------------------- pickle


def pickled_globals(path: str) -> list[str]:
    """``module.qualname`` of every class or function a ``torch.save`` file refers to."""
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
        data = zf.read(name)
    found: list[str] = []
    strings: list[str] = []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            found.append(str(arg).replace(" ", "."))
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            strings.append(str(arg))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.append(f"{strings[-2]}.{strings[-1]}")
    return list(dict.fromkeys(found))


def user_modules(globals_: list[str]) -> list[str]:
    mods = []
    for g in globals_:
        module = g.rsplit(".", 1)[0]
        top = module.split(".")[0]
        if top not in _SAFE_MODULE_PREFIXES and module not in mods:
            mods.append(module)
    return mods


class PickleBackend(Backend):
    name = "pickle"
    description = "torch.save(model) → torch.load in a fresh Python process"

    def build(self, ctx):
        import torch

        from ..worker import Worker, WorkerDied, WorkerError

        path = ctx.path("model.pt")
        try:
            with ctx.stage("save"):
                torch.save(ctx.model, path)
        except StageError as err:
            raise StageError("save", _explain_pickle_save(err.cause, ctx.model) or err.message) from None
        globals_ = pickled_globals(path)
        modules = user_modules(globals_)
        ctx.note("modules", modules)
        if "__main__" in modules:
            cls = [g for g in globals_ if g.startswith("__main__.")]
            raise StageError(
                "load",
                f"the pickle refers to {', '.join(cls)} defined in __main__ (the script being run); a fresh process "
                "cannot import it\n  fix: move the class into an importable module, or deploy with state_dict",
            )
        with ctx.stage("load"):
            worker = Worker()
            ctx.cleanup.callback(worker.close)
            try:
                reply = worker.call({"op": "load_pickle", "path": path})
            except WorkerError as exc:
                raise StageError("load", _explain_pickle_load(exc.reply, modules)) from None
            except WorkerDied as exc:
                raise StageError("load", f"{exc.description} while loading the pickle\n{exc.log}") from None
        ctx.note("weights_only", reply["weights_only"])
        ctx.note("weights_only_error", reply["weights_only_error"])
        ctx.note("unsafe_load_needed", not reply["weights_only"])
        if not reply["weights_only"]:
            import re

            from ..errors import UnsafeLoadWarning, warn

            refused = re.search(r"GLOBAL ([\w.]+)", reply["weights_only_error"])
            what = refused.group(1) if refused else "the model's classes"
            # one short line; torch's whole refusal is in the report (details.weights_only_error)
            warn(UnsafeLoadWarning(
                f"pickle: loads only with torch.load(weights_only=False), which runs code from the file ({what} is "
                "not an allowed global); ship a state_dict, or torch.serialization.add_safe_globals it"))

        from ..compare import Leaves

        def run(args):
            try:
                return Leaves(tuple(x) for x in worker.call({"op": "run", "args": list(args), "keywords": ctx.space.names if ctx.space.keywords else None})["leaves"])
            except WorkerError as exc:
                where = f"\n  at {exc.reply['where']}" if exc.reply.get("where") else ""
                raise StageError("run", f"the unpickled model fails in a fresh process: {exc.reply['error']}{where}") from None
            except WorkerDied as exc:
                raise StageError("run", f"{exc.description} while running the unpickled model\n{exc.log}") from None

        return run


def _explain_pickle_save(exc: BaseException | None, model) -> str | None:
    text = str(exc) if exc is not None else ""
    if "local object" in text or "<locals>" in text:
        qual = next((m.group(0) for m in [__import__("re").search(r"'([^']*<locals>[^']*)'", text)] if m), "")
        return (f"pickle cannot save {qual or 'a class'}: it is defined inside a function, so no process can import "
                "it by name\n  fix: define the class at module level, or deploy with state_dict")
    if "lambda" in text:
        return f"pickle cannot save a lambda held by the model ({text.splitlines()[0]})\n  fix: use a named module-level function"
    return None


def _explain_pickle_load(reply: dict, modules: list[str]) -> str:
    err = reply.get("error", "")
    text = f"a fresh Python process cannot load the pickled model: {err}"
    if reply.get("type") in ("ModuleNotFoundError", "AttributeError"):
        text += ("\n  the pickle stores classes by import path; the loading process must be able to import: "
                 + (", ".join(modules) or "(no user modules)"))
        text += "\n  fix: make those modules importable where the model is loaded, or deploy with state_dict"
    return text


# ------------------------------------------------------------------------------------ checkpoint


@dataclass
class TrainRecipe:
    """How the checkpoint backend trains: the user's optimizer, loss and resume recipe."""

    optimizer: Callable[[Any], Any] | None = None  # params -> optimizer; default Adam(lr=1e-3)
    scheduler: Callable[[Any], Any] | None = None  # optimizer -> LR scheduler
    loss: Callable[[Any], Any] | None = None  # outputs -> scalar; default mean square of float outputs
    steps: int = 3  # steps before the checkpoint, and again after resuming
    save: tuple[str, ...] = ("epoch", "model", "optimizer")

    KEYS = ("optimizer", "scheduler", "loss", "steps", "save")
    PARTS = ("epoch", "model", "optimizer", "scheduler")

    @classmethod
    def from_option(cls, value: Any) -> TrainRecipe:
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise SpecError(f"train={value!r} must be a dict with keys {', '.join(cls.KEYS)}")
        unknown = sorted(set(value) - set(cls.KEYS))
        if unknown:
            raise SpecError(f"train: unknown key(s) {unknown}; known: {', '.join(cls.KEYS)}")
        recipe = cls(**value)
        if isinstance(recipe.steps, bool) or not isinstance(recipe.steps, int) or recipe.steps < 1:
            raise SpecError(f"train['steps']={recipe.steps!r} must be a positive int")
        recipe.save = tuple(recipe.save)
        bad = [p for p in recipe.save if p not in cls.PARTS]
        if bad or "model" not in recipe.save:
            raise SpecError(f"train['save']={recipe.save!r}: parts must come from {cls.PARTS} and include 'model'")
        for key in ("optimizer", "scheduler", "loss"):
            if getattr(recipe, key) is not None and not callable(getattr(recipe, key)):
                raise SpecError(f"train['{key}'] must be callable")
        return recipe


def _default_loss(outputs):
    from ..compare import flatten

    floats = [v for _, v in flatten(outputs) if hasattr(v, "is_floating_point") and v.is_floating_point() and v.requires_grad]
    if not floats:
        raise StageError("run", "the model's outputs have no float tensor that needs grad, so there is nothing to train "
                                "on\n  fix: pass train={'loss': fn} computing a scalar loss from the outputs")
    return sum(v.float().pow(2).mean() for v in floats)


class CheckpointBackend(Backend):
    name = "checkpoint"
    description = "train k steps, save {epoch, model, optimizer}, load into fresh model and optimizer, continue"

    def verify(self, ctx):
        import torch

        recipe = TrainRecipe.from_option(ctx.options.get("train"))
        if not any(p.requires_grad for p in ctx.model.parameters()):
            raise StageError("run", "the model has no trainable parameters, so there is no training to resume\n"
                                    "  fix: drop 'checkpoint' from this model's backends")
        k = recipe.steps
        batches = self._batches(ctx, 2 * k)
        with torch.random.fork_rng():
            reference = copy.deepcopy(ctx.model)
            ref_opt, ref_sched = self._optim(reference, recipe)
            with ctx.stage("run"):
                for step in range(2 * k):
                    self._step(ctx, reference, ref_opt, ref_sched, batches[step], step, recipe)

            before = copy.deepcopy(ctx.model)
            opt, sched = self._optim(before, recipe)
            with ctx.stage("run"):
                for step in range(k):
                    self._step(ctx, before, opt, sched, batches[step], step, recipe)
            path = ctx.path("checkpoint.pt")
            parts = {"epoch": k, "model": before.state_dict(), "optimizer": opt.state_dict()}
            if sched is not None:
                parts["scheduler"] = sched.state_dict()
            with ctx.stage("save"):
                torch.save({p: parts[p] for p in recipe.save if p in parts}, path)
            with ctx.stage("load", "the fresh model from the factory must match the saved state's names"):
                resumed = ctx.fresh_model()
                res_opt, res_sched = self._optim(resumed, recipe)
                ckpt = torch.load(path, weights_only=True, map_location="cpu")
                resumed.load_state_dict(ckpt["model"], strict=True)
                if "optimizer" in ckpt:
                    res_opt.load_state_dict(ckpt["optimizer"])
                if "scheduler" in ckpt and res_sched is not None:
                    res_sched.load_state_dict(ckpt["scheduler"])
                start = int(ckpt.get("epoch", 0))
            ctx.note("checkpoint_keys", sorted(ckpt))
            not_restored = self._not_restored(before, opt, sched, resumed, res_opt, res_sched, recipe)
            ctx.note("not_restored", not_restored)
            with ctx.stage("run"):
                for step in range(start, 2 * k):
                    self._step(ctx, resumed, res_opt, res_sched, batches[step], step, recipe)

        differing = _state_differences(reference, resumed) + _training_state_differences(ref_opt, ref_sched, res_opt,
                                                                                          res_sched)
        fix = "save and restore what is listed: " + ", ".join(sorted({_part(d) for d in not_restored})) if not_restored else \
            "make the resumed run start from the saved epoch with the same optimizer and scheduler"
        if differing:
            text = (f"resumed training does not equal uninterrupted training after {2 * k} steps "
                    f"({k} before the checkpoint, {k} after)\n  differs: " + "; ".join(differing[:6]))
            if not_restored:
                text += "\n  not restored by the checkpoint:\n" + "\n".join(f"    {d}" for d in not_restored)
            raise StageError("compare", text + f"\n  fix: {fix}")
        ctx.note("train_steps", 2 * k)
        reference.train(ctx.model.training)
        resumed.train(ctx.model.training)
        _with_diagnosis(lambda: ctx.run_examples(lambda args: ctx.call(resumed, args), reference=lambda a: ctx.eager(a, reference),
                                                 record=False),
                        not_restored, fix)

    # -- pieces ---------------------------------------------------------------------------------

    @staticmethod
    def _batches(ctx, n: int) -> list[tuple]:
        from ..generate import InputRecipe

        if not ctx.space.specs:
            return [ctx.canonical.args] * n
        dims = ctx.space.opt_dims()
        return [ctx.space.build(dims, [InputRecipe(1000 + i, "uniform") for _ in ctx.space.specs]).args for i in range(n)]

    @staticmethod
    def _optim(model, recipe: TrainRecipe):
        import torch

        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = recipe.optimizer(params) if recipe.optimizer else torch.optim.Adam(params, lr=1e-3)
        sched = recipe.scheduler(opt) if recipe.scheduler else None
        return opt, sched

    @staticmethod
    def _step(ctx, model, opt, sched, batch: tuple, step: int, recipe: TrainRecipe) -> None:
        import torch

        torch.manual_seed(10_000 + step)  # same dropout masks in both runs; RNG state is not what is tested
        opt.zero_grad(set_to_none=True)
        out = ctx.call(model, tuple(a.clone() for a in batch))
        loss = recipe.loss(out) if recipe.loss else _default_loss(out)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()

    @staticmethod
    def _not_restored(model, opt, sched, resumed, res_opt, res_sched, recipe) -> list[str]:
        found = state_outside_state_dict(model, resumed)
        saved_state, new_state = opt.state_dict(), res_opt.state_dict()
        if saved_state["state"].keys() != new_state["state"].keys() or any(
            not _same(saved_state["state"][i], new_state["state"][i]) for i in saved_state["state"]
        ):
            found.append(f"optimizer state ({type(opt).__name__}: "
                         f"{', '.join(sorted({k for s in saved_state['state'].values() for k in s}))}) was not restored")
        for i, (a, b) in enumerate(zip(saved_state["param_groups"], new_state["param_groups"])):
            diff = sorted(k for k in a if k != "params" and not _same(a[k], b.get(k)))
            if diff:
                found.append(f"optimizer param_group {i} hyperparameters {diff} differ after loading "
                             f"(e.g. {diff[0]}: saved {a[diff[0]]!r}, loaded {b.get(diff[0])!r})")
        if sched is not None:
            if "scheduler" not in recipe.save:
                found.append(f"LR scheduler {type(sched).__name__} (last_epoch={sched.last_epoch}) is not in the "
                             "checkpoint")
            elif not _same(sched.state_dict(), res_sched.state_dict()):
                found.append(f"LR scheduler {type(sched).__name__} state differs after loading")
        return found


def _part(line: str) -> str:
    if line.startswith("optimizer"):
        return "optimizer.state_dict()"
    if line.startswith("LR scheduler"):
        return "scheduler.state_dict() (train={'save': (..., 'scheduler')})"
    return "the tensors outside the state_dict (make them persistent buffers)"


def _same(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _training_state_differences(opt, sched, res_opt, res_sched) -> list[str]:
    """Where the optimizer and LR scheduler of the two runs end up differently. A scheduler that was not
    restored can leave the learning rates right for a few steps (they live in the optimizer's param
    groups) while its own position in the schedule is wrong."""
    out = []
    a, b = opt.state_dict(), res_opt.state_dict()
    groups = [[{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]] for sd in (a, b)]
    if not (_same(a["state"], b["state"]) and _same(*groups)):
        out.append(f"optimizer state ({type(opt).__name__})")
    if sched is not None:
        sa, sb = sched.state_dict(), res_sched.state_dict()
        keys = [k for k in sa if not _same(sa[k], sb.get(k))]
        keys = [k for k in keys if not k.startswith("_")] or keys
        if keys:
            out.append(f"LR scheduler {type(sched).__name__} state ("
                       + ", ".join(f"{k}: {sa[k]!r} uninterrupted, {sb.get(k)!r} resumed" for k in keys[:3]) + ")")
    return out


def _state_differences(a, b) -> list[str]:
    sa, sb = a.state_dict(), b.state_dict()
    out = []
    for key, value in sa.items():
        other = sb.get(key)
        if not _same(value, other):
            if other is not None and value.is_floating_point() and value.shape == other.shape:
                out.append(f"{key} (max abs diff {(value.double() - other.double()).abs().max().item():.3g})")
            else:
                out.append(key)
    return out
