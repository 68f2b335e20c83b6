"""What the backends of one model test share: the model, the eager references, the branch search, the content key.

A model test (``test_bert``) has one item per backend (``test_bert[onnx]``, ``test_bert[tvm]``, ...). Each item
runs one check, and every check of the same model on the same inputs needs the same things: the model built
from the factory, eager PyTorch's outputs and recorded decisions on every example (the same examples: the same
seed), the reference sanity check, the branch search (eager only: the same model, spec and seed give the same
decisions) and the hash of the model's content. A :class:`ModelTest` holds them, and each check borrows them.

Work is filed under the model and its inputs (:class:`Work`, one per model object, input space and recording
mode): a backend that got another model (the ``deploy`` fixture builds one per item) shares nothing.

A check in a forked worker process (the native backends) inherits what the model test holds when it is forked;
what it adds there is sent back with its result (:meth:`Work.added`, :meth:`Work.merge`), so the next check,
forked or not, finds it. Nothing is done in pytest's own process on a worker's behalf: a model that crashes in
eager PyTorch still crashes only the worker.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field
from typing import Any, cast

#: Eager outputs kept per model test, in bytes of tensor data: beyond it, references are computed again.
REFERENCE_BYTES = 256 * 1024**2


@dataclass
class Search:
    """The branch search's outcome: the examples it found, the runs to fold into a check's analysis (in order,
    ``("observe" | "note_fixed", run)``) and the report details it wrote."""

    found: list
    steps: list[tuple[str, Any]]
    details: dict[str, Any]


@dataclass
class Work:
    """Shared work for one model object, input space and recording mode."""

    #: args digest -> (reference outputs as Leaves, the recorded run, the recording mode's description)
    references: dict[bytes, tuple[Any, Any, str]] = field(default_factory=dict)
    reference_bytes: int = 0
    #: the canonical example's recorded run (tracked: which decisions the varying inputs steer)
    search: Search | None = None
    #: the eager run a tracing backend's path is recorded from (decisions.Run)
    traced_run: Any = None
    #: the kinds of backend (what the reference check asks of the outputs for them) whose reference sanity check
    #: passed on this model and canonical example
    reference_checked: set = field(default_factory=set)
    content_key: str | None = None
    #: the warnings already issued for this model test (each is said once, whichever backend found it)
    warned: set = field(default_factory=set)
    #: "all" (or a kind of backend, for outputs only some kinds cannot take) -> (the backend, stage, message) of a
    #: failure of eager PyTorch itself (the reference check): the model test's other backends fail for the same
    #: reason without running (kept in pytest's process)
    reference_failed: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    #: the model's weights and structure hashed (fingerprint.model_digest), for the result and artifact keys
    digest: str | None = None
    #: the mask-dim probe (which outputs are per-token), keyed by the first example's mask shapes: (the probe's
    #: mask shapes by input position, its eager output shapes by path, or the error eager PyTorch raised on it)
    mask_probes: dict[tuple, Any] = field(default_factory=dict)
    #: keys added in this process since :meth:`mark` (what a worker sends back)
    _new: set[bytes] = field(default_factory=set)
    _marked: dict[str, Any] = field(default_factory=dict)

    def model_digest(self, model) -> str:
        """``fingerprint.model_digest(model)``, hashed once for every backend of the model test."""
        if self.digest is None:
            from .fingerprint import model_digest

            self.digest = model_digest(model)
        return self.digest

    # -- references ----------------------------------------------------------------------------

    def reference(self, args: tuple) -> tuple[Any, Any, str] | None:
        return self.references.get(args_digest(args))

    def keep_reference(self, args: tuple, leaves, run, mode: str) -> None:
        size = sum(v.numel() * v.element_size() for _, v in leaves if hasattr(v, "element_size"))
        if self.reference_bytes + size > REFERENCE_BYTES:
            return
        key = args_digest(args)
        if key not in self.references:
            self.references[key] = (leaves, run, mode)
            self.reference_bytes += size
            self._new.add(key)

    # -- a worker's additions ------------------------------------------------------------------

    def mark(self) -> None:
        """Remember what is here now: :meth:`added` then gives what came later (in a forked worker)."""
        self._new = set()
        self._marked = {"search": self.search is not None, "traced": self.traced_run is not None,
                        "checked": set(self.reference_checked), "key": self.content_key is not None,
                        "digest": self.digest is not None, "probes": set(self.mask_probes)}

    def added(self) -> bytes | None:
        """What this process added since :meth:`mark`, pickled; None when nothing was, or it does not pickle."""
        part: dict[str, Any] = {"references": {k: self.references[k] for k in self._new}}
        if self.search is not None and not self._marked.get("search"):
            part["search"] = self.search
        if self.traced_run is not None and not self._marked.get("traced"):
            part["traced_run"] = self.traced_run
        if self.reference_checked - self._marked.get("checked", set()):
            part["reference_checked"] = set(self.reference_checked)
        if self.content_key is not None and not self._marked.get("key"):
            part["content_key"] = self.content_key
        if self.digest is not None and not self._marked.get("digest"):
            part["digest"] = self.digest
        probes = {k: v for k, v in self.mask_probes.items() if k not in self._marked.get("probes", set())}
        if probes:
            part["mask_probes"] = probes
        if not any(part.values()):
            return None
        try:
            return pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # an output or example that does not pickle: the next check computes it again
            part.pop("search", None)
            part["references"] = {}
            try:
                return pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:
                return None

    def merge(self, data: bytes | None) -> None:
        """Take in what a worker process added (from :meth:`added`)."""
        if not data:
            return
        # a pickle from a process pytest itself forked, over a private pipe (as the worker's whole reply is)
        part = pickle.loads(data)
        for key, value in part.get("references", {}).items():
            if key not in self.references:
                self.references[key] = value
                self.reference_bytes += sum(v.numel() * v.element_size() for _, v in value[0]
                                            if hasattr(v, "element_size"))
        if self.search is None and part.get("search") is not None:
            self.search = part["search"]
        if self.traced_run is None and part.get("traced_run") is not None:
            self.traced_run = part["traced_run"]
        self.reference_checked |= part.get("reference_checked") or set()
        if self.content_key is None:
            self.content_key = part.get("content_key")
        if self.digest is None:
            self.digest = part.get("digest")
        for key, value in (part.get("mask_probes") or {}).items():
            self.mask_probes.setdefault(key, value)


class ModelTest:
    """What the backends of one model test share (see the module docstring). ``model`` and ``example_inputs``
    are the model the test built (Form 1 builds it once, for every backend)."""

    def __init__(self, test_id: str) -> None:
        self.test_id = test_id
        self.built: tuple[Any, Any] | None = None
        self._work: dict[tuple, tuple[Any, Work]] = {}
        self._state: tuple[Any, ModelState] | None = None
        #: whether the user was told that forward changes the model's state (once per model test)
        self.state_reported = False

    def model_state(self, model) -> ModelState:
        """The state ``model`` had when its first check began, put back before every later check: every backend
        starts from the same model, whichever ran first."""
        if self._state is None or self._state[0] is not model:
            self._state = (model, ModelState(model))
            self.state_reported = False
        else:
            self._state[1].restore(model)
        return self._state[1]

    def work(self, model, space, *extra: Any) -> Work:
        """The shared work for ``model`` (this very object, in its current state) and the input space."""
        from .fingerprint import identity

        key = (repr(identity(model)), repr((space.specs, space.dims, space.names, space.keywords,
                                            space.strategy_override, _given(space))), extra)
        entry = self._work.get(key)
        if entry is None or entry[0] is not model:
            if any(held is not model for held, _ in self._work.values()):
                self._work.clear()  # another model (a test that builds one per item): hold one at a time
            entry = self._work[key] = (model, Work())
        return entry[1]


def _given(space) -> Any:
    given = getattr(space, "given", None)
    return None if given is None else args_digest(tuple(given))


def args_digest(args: tuple) -> bytes:
    """A digest of one example's inputs: their structure, and the dtype, shape and bytes of every tensor leaf (inside
    dicts, lists and every pytree type too), the repr of any other leaf. A tensor's repr would not do: it
    summarises tensors over 1000 elements, so two examples differing in one element would share a digest."""
    from torch.utils._pytree import tree_flatten

    from .cache import _tensor_bytes
    from .tensors import is_tensor

    leaves, structure = tree_flatten(args)
    h = hashlib.sha256(str(structure).encode())
    for a in leaves:
        if is_tensor(a):
            h.update(f"{a.dtype}{tuple(a.shape)}".encode())
            h.update(_tensor_bytes(a))
        else:
            h.update(repr(a).encode())
        h.update(b"|")
    return h.digest()


#: Types of plain module attributes whose value is kept (and put back): numbers, strings, tensors and shallow
#: containers of them. Anything else (a config object, a function) is left alone.
_KEPT = (bool, int, float, str, type(None), tuple, list, dict, set)
_MISSING = object()


class ModelState:
    """What ``forward`` may change in a model, as it was when captured: every module's buffers (non-persistent
    ones included) and its plain attributes of simple types (numbers, strings, tensors, shallow containers).

    Buffers are copied (they are small beside the weights); parameters are not: their version counters tell
    an in-place change, which is reported but cannot be undone. A buffer or tensor attribute that ``forward``
    replaced (a cache grown lazily) is put back without a copy being needed; one written in place is restored
    from the copy."""

    def __init__(self, model) -> None:
        import torch

        internal = set(vars(torch.nn.Module())) | {"training"}
        self.buffers: dict[str, tuple[Any, Any, int]] = {}  # name -> (tensor object, copy, version)
        self.attrs: dict[str, dict[str, tuple[Any, Any, Any]]] = {}  # module -> {attr: (value, copy, version)}
        self.params: dict[str, tuple[Any, int]] = {}
        self._internal = internal
        for mod_name, module in model.named_modules():
            prefix = f"{mod_name}." if mod_name else ""
            for name, buf in module.named_buffers(recurse=False):
                self.buffers[prefix + name] = (buf, buf.detach().clone(), buf._version)
            for name, param in module.named_parameters(recurse=False):
                self.params[prefix + name] = (param, param._version)
            self.attrs[mod_name] = {name: _keep(value) for name, value in vars(module).items()
                                    if _watched(name, value, internal)}

    def changes(self, model) -> list[str]:
        """What differs from the captured state, one short phrase per buffer, parameter or attribute."""
        out = []
        modules = dict(model.named_modules())
        for name, (buf, _, version) in self.buffers.items():
            mod_name, _, attr = name.rpartition(".")
            now = modules[mod_name]._buffers.get(attr) if mod_name in modules else None
            if now is None or now is not buf:
                out.append(f"buffer '{name}' (replaced)")
            elif buf._version != version:
                out.append(f"buffer '{name}' (written in place)")
        for name, (param, version) in self.params.items():
            if param._version != version:
                out.append(f"parameter '{name}' (written in place; not undone)")
        for mod_name, kept in self.attrs.items():
            module = modules.get(mod_name)
            if module is None:
                continue
            prefix = f"{mod_name}." if mod_name else ""
            now = {n: v for n, v in vars(module).items() if _watched(n, v, self._internal)}
            for name in now.keys() - kept.keys():
                out.append(f"attribute '{prefix}{name}' (added)")
            for name, (value, copied, version) in kept.items():
                if name not in now:
                    out.append(f"attribute '{prefix}{name}' (removed)")
                elif not _same(now[name], value, copied, version):
                    out.append(f"attribute '{prefix}{name}' ({_short(copied)} -> {_short(now[name])})")
        return out

    def reset(self, model) -> list[str]:
        """:meth:`changes`, then :meth:`restore` when there are any (nothing is copied when nothing changed)."""
        changed = self.changes(model)
        if changed:
            self.restore(model)
        return changed

    def restore(self, model) -> None:
        """Put the captured buffers and attributes back (the same tensor objects, their data as captured)."""
        import torch

        modules = dict(model.named_modules())
        with torch.no_grad():
            for name, (buf, copied, version) in self.buffers.items():
                mod_name, _, attr = name.rpartition(".")
                module = modules.get(mod_name)
                if module is None:
                    continue
                if buf._version != version:
                    buf.copy_(copied)
                    self.buffers[name] = (buf, copied, buf._version)
                if module._buffers.get(attr) is not buf:
                    module._buffers[attr] = buf
        for mod_name, kept in self.attrs.items():
            module = modules.get(mod_name)
            if module is None:
                continue
            for name in [n for n, v in vars(module).items() if _watched(n, v, self._internal)
                         and n not in kept]:
                delattr(module, name)
            for name, (value, copied, version) in kept.items():
                if module.__dict__.get(name, _MISSING) is value and _same(value, value, copied, version):
                    continue  # unchanged: a container subclass that refuses changes (diffusers' FrozenDict) is left be
                # the container types' own methods: a subclass may override (or refuse) them
                if isinstance(copied, list):
                    list.__setitem__(value, slice(None), copied)
                elif isinstance(copied, dict):
                    dict.clear(value)
                    dict.update(value, copied)
                elif isinstance(copied, set):
                    set.clear(value)
                    set.update(value, copied)
                module.__dict__[name] = value


def _watched(name: str, value: Any, internal: set) -> bool:
    """A plain attribute the state keeps: not torch's own bookkeeping (nor a dunder TorchScript adds)."""
    return name not in internal and not name.startswith("__") and _kept(value)


def _kept(value) -> bool:
    from .tensors import is_tensor

    return isinstance(value, _KEPT) or is_tensor(value)


def _keep(value) -> tuple[Any, Any, Any]:
    """(the value, a shallow copy of a container, a tensor's version counter)."""
    from .tensors import is_tensor

    if is_tensor(value):
        return value, value, value._version
    for base in (list, dict, set):  # the plain container: a subclass's constructor may take other arguments
        if isinstance(value, base):
            return value, base(value), None
    return value, value, None


def _same(now: Any, value: Any, copied: Any, version: Any) -> bool:
    from .tensors import is_tensor

    if is_tensor(value):
        return now is value and value._version == version
    if isinstance(copied, (list, dict, set)):
        if type(now) is not type(value) or len(now) != len(copied):
            return False
        if isinstance(copied, dict):
            current = cast(dict, now)
            return current.keys() == copied.keys() and all(_equal(current[k], copied[k]) for k in copied)
        if isinstance(copied, set):
            return now == copied
        return all(_equal(a, b) for a, b in zip(now, copied))
    try:
        return bool(now == value) and type(now) is type(value)
    except Exception:
        return now is value


def _equal(a: Any, b: Any) -> bool:
    """An entry of a watched container is unchanged when it is the same object, or an equal value of the same type
    (a plan rebuilt as an equal dict of tuples is no change); a tensor only when it is the same object."""
    from .tensors import is_tensor

    if a is b:
        return True
    if is_tensor(a) or is_tensor(b) or type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except Exception:  # an __eq__ that raises or returns something without a truth value
        return False


def _short(value) -> str:
    from .tensors import is_tensor

    if is_tensor(value):
        return f"tensor{tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 30 else text[:27] + "..."
