"""Zero-argument factories for ``pytest --deploy-model``, one per architecture of :mod:`hf.zoo`.

``pytest --deploy-model=tests.hf.inferred:bert`` checks ``zoo.BY_NAME["bert"].build()`` with inputs inferred by
:func:`pytest_deploy.infer.infer_inputs`, no declaration written. An architecture whose default init vanishes
(``zoo.Arch.vanishing``) also gets ``NAME_init``, ``build(init="normal")``, as ``tests/hf/test_corpus.py``
declares it. ``tests/hf/compare_inferred.py`` (``make hf-inferred``) compares their verdicts with the corpus's
hand-written declarations.

Nothing is downloaded (random weights, tiny configs); transformers is imported when a factory is called.
"""

from __future__ import annotations

import os

try:
    from . import zoo
except ImportError:  # imported as hf.inferred, with tests/ on sys.path
    from hf import zoo  # type: ignore[no-redef]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _factory(arch: zoo.Arch, init: str, name: str):
    def build():
        return arch.build(init=init)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{arch.model_class} ({arch.family}), init={init!r}"
    return build


#: factory name -> factory, in the corpus's order
FACTORIES = {}
for _arch in zoo.ARCHS:
    FACTORIES[_arch.name] = _factory(_arch, "default", _arch.name)
    if _arch.vanishing:  # the same architecture with weights whose signal survives, as the corpus declares it
        FACTORIES[f"{_arch.name}_init"] = _factory(_arch, "normal", f"{_arch.name}_init")
globals().update(FACTORIES)
