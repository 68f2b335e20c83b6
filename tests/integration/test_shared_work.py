"""Issue 18: the work a model test's backends share is done once, and a passing run leaves little behind.

Each test counts what it is about (model builds, eager runs, digests, files on disk); none times anything.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from pytest_deploy import mask, tensor, verify

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def tiny_bert():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=37, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.BertModel._from_config(cfg, attn_implementation="eager").eval()


BERT_INPUTS = {"input_ids": tensor("batch", "seq", dtype=torch.int64, low=0, high=99),
               "attention_mask": mask("batch", "seq")}
BERT_DIMS = {"batch": (1, 2), "seq": (2, 8)}


# ------------------------------------------------------------------ the line-tracing decision (item 4)


def test_the_first_check_of_a_session_traces_the_lines_of_an_installed_models_files(tmp_path):
    """BertModel's classes live under site-packages: they count as user code only once the check registers
    them. The decision whether to trace lines must come after that, or the first check of a session says
    the model has no if/while (and the next one, with the files registered, says it has). The result-cache key
    covers those files too: the second check has the first one's key, and is reported from the cache."""
    from pytest_deploy import sources

    model = tiny_bert()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sources, "_MODEL_FILES", set())  # a fresh session: no model's files registered yet
        patch.setattr(sources, "_MODEL_PACKAGES", set())
        sources.is_user_file.cache_clear()
        try:
            first = verify(model, "state_dict", factory=tiny_bert, inputs=BERT_INPUTS, dims=BERT_DIMS, examples=1,
                           isolate="none", cache_dir=tmp_path)
            second = verify(model, "state_dict", factory=tiny_bert, inputs=BERT_INPUTS, dims=BERT_DIMS, examples=1,
                            isolate="none", cache_dir=tmp_path)
        finally:
            sources.is_user_file.cache_clear()
    sources.is_user_file.cache_clear()  # what the restored registry says
    assert first.details["branch_recording"] == "tensor conversions and if/while outcomes"
    assert second.cached and "reused" in second.details
    assert second.details["branch_recording"] == first.details["branch_recording"]


# ------------------------------------------------------------------------- no cache, no hashing


class TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(6, 8)
        self.b = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def make_two_layers():
    torch.manual_seed(0)
    return TwoLayers().eval()


@pytest.mark.parametrize("backend", ["state_dict", "pickle", "trace", "script", "export", "onnx"])
def test_without_a_cache_the_weights_are_never_hashed(monkeypatch, backend):
    """With no cache (verify()'s default, --deploy-no-cache) no key is looked up, so no weight is hashed: the
    model digest and the exported program's fingerprint are never called (each would raise here)."""
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    from pytest_deploy import cache, fingerprint

    def refuse(*args, **kwargs):
        raise AssertionError("the weights were hashed without a cache")

    monkeypatch.setattr(fingerprint, "model_digest", refuse)
    monkeypatch.setattr(cache, "program_fingerprint", refuse)
    model = make_two_layers()
    result = verify(model, backend, factory=make_two_layers, inputs=[tensor("batch", 6)], dims={"batch": (1, 3)},
                    examples=2, isolate="none")
    assert result.outcome == "passed"
    assert "cache_key" not in result.details


def test_without_a_cache_an_export_is_still_shared_by_the_backends_of_one_model_and_redone_after_a_change():
    """The exported program is shared without hashing (the model object and its tensors' version counters),
    and a change to the weights in place makes a new export."""
    model = make_two_layers()
    kw = dict(inputs=[tensor("batch", 6)], dims={"batch": (1, 3)}, examples=1, isolate="none")
    first = verify(model, "export", **kw)
    again = verify(model, "export", **kw)
    with torch.no_grad():
        model.a.weight.mul_(2)
    changed = verify(model, "export", **kw)
    assert "exported_program" not in first.details
    assert again.details["exported_program"].startswith("reused")
    assert "exported_program" not in changed.details


# ------------------------------------------------------------------------- what a run leaves on disk

LEFT_BEHIND = """
import torch
from pytest_deploy import deployable, tensor


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(x)


class Leaky(torch.nn.Module):
    # float(x.sum()) becomes a constant when traced: any other input gives another output
    def forward(self, x):
        return x + float(x.sum())


INPUTS = dict(inputs=[tensor("batch", 6)], dims={"batch": (1, 3)}, examples=2)


@deployable(backends=["state_dict", "pickle", "trace", "export", "onnx"], **INPUTS)
def test_passes():
    return Net().eval()


@deployable(backends=["trace"], **INPUTS)
def test_leaks():
    return Leaky()
"""


def files_under(root) -> dict[str, int]:
    """Every file below ``root`` (relative path -> bytes)."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = os.path.getsize(path)
    return out


@pytest.mark.parametrize("keep", [False, True], ids=["default", "keep-passing"])
def test_passing_checks_leave_nothing_in_pytests_temp_dir_and_failing_ones_keep_their_artifact(pytester, keep):
    pytester.makepyfile(test_left=LEFT_BEHIND)
    basetemp = pytester.path / "basetemp"
    args = ["-p", "no:cacheprovider", f"--basetemp={basetemp}", "-p", "no:randomly"]
    result = pytester.runpytest(*args, *(["--deploy-keep-passing"] if keep else []))
    result.assert_outcomes(passed=5, failed=1)
    left = files_under(basetemp)
    passing = {p: n for p, n in left.items() if "test_passes" in p}
    failing = {p: n for p, n in left.items() if "test_leaks" in p}
    assert any(p.endswith("model.pt") for p in failing)  # the failing trace check keeps its archive, as before
    if keep:
        for name in ("state_dict.pt", "model.pt", "model.pt2", "model.onnx", "model.sim.onnx"):
            assert any(p.endswith(name) for p in passing), (name, sorted(passing))
    else:
        assert passing == {}
        assert set(left) == set(failing)


# ------------------------------------------------------------- one model, one reference, one search per model test

SHARED = """
import torch
from pytest_deploy import deployable, tensor
from pytest_deploy.context import CheckContext

BUILDS = []
EAGER = []
_eager = CheckContext.eager


def counted_eager(self, args, model=None):
    EAGER.append(self.backend)
    return _eager(self, args, model)


CheckContext.eager = counted_eager

from pytest_deploy import fingerprint

DIGESTS = []
_digest = fingerprint.model_digest


def counted_digest(model):
    DIGESTS.append(1)
    return _digest(model)


fingerprint.model_digest = counted_digest


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x):
        if bool(x.sum() > 100):  # a decision the search chases (x in [-1, 1] never gets there)
            return self.fc(x) * 2
        return self.fc(x)


class PlainNet(Net):
    def forward(self, x):
        return self.fc(x)


@deployable(backends=BACKENDS, inputs=[tensor("batch", 6)], dims={"batch": (1, 3)}, examples=5)
def test_net():
    BUILDS.append(1)
    torch.manual_seed(0)
    return (Net if DECIDE else PlainNet)().eval()


def test_counts(request):
    from pytest_deploy.plugin import SESSION_KEY

    CheckContext.eager = _eager
    fingerprint.model_digest = _digest
    held = len(request.config.stash[SESSION_KEY].model_tests)  # let go of after the model test's last item
    with open("counts.txt", "w") as out:
        out.write(f"{len(BUILDS)} {len(EAGER)} {held} {len(DIGESTS)}")
"""


def shared_run(pytester, backends, *args, decide=True):
    pytester.makepyfile(test_shared=f"BACKENDS = {backends!r}\nDECIDE = {decide!r}\n" + SHARED)
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly", "--deploy-report=report.json", *args)
    result.assert_outcomes(passed=len(backends) + 1)
    builds, eager, held, digests = map(int, (pytester.path / "counts.txt").read_text().split())
    assert held == 0

    report = json.loads((pytester.path / "report.json").read_text())
    return builds, eager, digests, {r["backend"]: r["details"] for r in report["results"]}


def test_the_backends_of_a_model_test_build_the_model_once_and_share_references_and_the_branch_search(pytester):
    """Four in-process backends, five examples: the model is built once (and once more for state_dict's fresh
    copy), each example's eager reference is computed once, the branch search and the reference check run
    once. Before, each backend built its own model and ran every eager run again: 5 builds and 4x the runs."""
    builds, eager, digests, details = shared_run(pytester, ["state_dict", "pickle", "trace", "script"],
                                                 "--deploy-isolate=none")
    assert builds == 2
    assert digests == 0  # no cache: nothing hashed
    # the reference check's second run once per kind of backend (state_dict, pickle and script; trace: a tensor
    # graph), the search's runs, the five references and trace's path: once each
    search_runs = details["state_dict"]["branch_search"]["runs"]
    assert eager == 2 + (1 + search_runs) + 5 + 1
    first, *others = ("state_dict", "pickle", "trace", "script")
    assert details[first]["model_test"]["branch_search"] == "ran"
    assert details[first]["model_test"]["references_computed"] == 5
    for backend in others:
        assert details[backend]["model_test"] == {"branch_search": "shared", "references_reused": 5}
        assert details[backend]["branch_search"] == details[first]["branch_search"]


def test_what_a_forked_worker_computes_for_its_model_test_comes_back_to_the_next_backend(pytester):
    """onnx runs in a forked worker first: the references and the search it made there reach trace, in pytest's
    own process, which runs eager PyTorch only for its reference check and its traced path."""
    pytest.importorskip("onnxruntime")
    _, eager, _, details = shared_run(pytester, ["onnx", "trace"], decide=False)  # torch.export refuses the decision
    assert details["onnx"]["isolated"] == "worker process"
    assert details["onnx"]["model_test"]["references_computed"] == 5
    assert details["onnx"]["model_test"]["branch_search"] == "ran"
    assert details["trace"]["model_test"] == {"branch_search": "shared", "references_reused": 5}
    # in this process: trace's reference check (a kind of its own) and its path; the rest ran in the worker and
    # came back
    assert eager == 2


def test_a_passing_state_dict_check_keeps_no_copy_of_the_model_alive():
    """The fresh instance state_dict loads into lives as long as its check: one model copy per process."""
    import gc
    import weakref

    built = []

    def factory():
        model = make_two_layers()
        built.append(weakref.ref(model))
        return model

    verify(make_two_layers(), "state_dict", factory=factory, inputs=[tensor("batch", 6)], dims={"batch": (1, 3)},
           examples=2, isolate="none")
    gc.collect()
    assert built and all(ref() is None for ref in built)


def test_the_shared_reference_check_still_asks_each_kind_of_backend_what_it_needs(pytester):
    """A string output is fine for state_dict and no tensor graph can return it: the trace check after a passing
    state_dict check of the same model test still refuses it, at stage run."""
    pytester.makepyfile(test_labels="""
        import torch
        from pytest_deploy import deployable, tensor


        class Labelled(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(4, 2)

            def forward(self, x):
                return self.fc(x), "label"


        @deployable(backends=["state_dict", "trace"], inputs=[tensor("batch", 4)], dims={"batch": (1, 2)},
                    examples=2)
        def test_labels():
            return Labelled().eval()
    """)
    result = pytester.runpytest("-p", "no:cacheprovider", "--deploy-isolate=none")
    result.assert_outcomes(passed=1, failed=1)
    assert "trace: stage run: output[1] is a str ('label')" in result.stdout.str()


def test_with_a_cache_the_weights_are_hashed_once_per_model_test(pytester, tmp_path):
    """The result keys of four backends and the artifact key of script start from one digest of the weights."""
    _, _, digests, details = shared_run(pytester, ["state_dict", "pickle", "trace", "script"], "--deploy-isolate=none",
                                        f"--deploy-cache-dir={tmp_path / 'cache'}")
    assert "cache_key" in details["script"]
    assert digests == 1
