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
from typing import Any

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
    #: the model's weights and structure hashed (fingerprint.model_digest), for the result and artifact keys
    digest: str | None = None
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
                        "digest": self.digest is not None}

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


class ModelTest:
    """What the backends of one model test share (see the module docstring). ``model`` and ``example_inputs``
    are the model the test built (Form 1 builds it once, for every backend)."""

    def __init__(self, test_id: str) -> None:
        self.test_id = test_id
        self.built: tuple[Any, Any] | None = None
        self._work: dict[tuple, tuple[Any, Work]] = {}

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
