"""Which nodes to keep in float32 so that a failing fp16 check passes.

onnxconverter-common's ``auto_convert_mixed_precision`` answers this by bisection: its ``SegmentList`` holds the
graph's nodes in order; each attempt converts one segment to float16 with every node outside the good segments
kept float32 (``node_block_list``); a segment whose outputs still validate is good, a failing one is split, and a
single failing node stays blocked. Its own attempts run on ONNX Runtime's CPU provider, which computes most
float16 nodes in float32 (see :mod:`.precision`), so there every attempt validates and the search ends at once.
:func:`search_block_list` runs the same ``SegmentList`` search with the caller's attempt: the graph converted with
that block list and run as the check runs it (the emulation graph on CPU), judged by the check's own comparison on
the example that failed. The list it returns passed its final attempt: it is verified, not guessed.

onnxconverter-common is imported inside the function.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

#: Ops the search leaves alone, as auto_convert_mixed_precision does: their subgraphs are converted whole.
SUBGRAPH_OPS = ("Loop", "If", "Scan")


@dataclass
class BlockSearch:
    """The search's outcome: ``nodes`` (verified to pass; None when none was found), ``attempts`` run, and why it
    stopped without a list (``budget``: ran out of time or attempts; ``no list passes``: even with every node kept
    float32 the example fails)."""

    nodes: list[str] | None
    attempts: int
    seconds: float
    stopped: str | None = None
    errors: list[str] = field(default_factory=list)


def search_block_list(node_names: Sequence[str], attempt: Callable[[list[str]], bool], *, seconds: float = 60.0,
                      max_attempts: int = 600) -> BlockSearch:
    """auto_convert_mixed_precision's bisection over ``node_names`` (the float32 graph's nodes, in order), where
    ``attempt(block_list)`` converts the graph keeping ``block_list`` float32 and says whether the failing example
    now passes. Stops after ``seconds`` or ``max_attempts``; the list returned passed its last attempt."""
    from onnxconverter_common.auto_mixed_precision import SegmentList

    start = time.monotonic()
    segments = SegmentList([n for n in node_names if n])
    out = BlockSearch(None, 0, 0.0)

    def run(block: list[str]) -> bool:
        out.attempts += 1
        try:
            return attempt(block)
        except Exception as exc:  # a converted graph that cannot run: this attempt fails, the search goes on
            out.errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300])
            return False

    while (segment := segments.get_largest()) is not None:
        if time.monotonic() - start > seconds or out.attempts >= max_attempts:
            out.stopped = "budget"
            out.seconds = time.monotonic() - start
            return out
        if run(segments.get_nodes(segment)):
            segment.good = True
        elif segment.size == 1:
            segment.bad = True
        else:
            segment.split()
    final = segments.get_nodes()
    if run(final):
        out.nodes = final
    else:
        out.stopped = "no list passes"
    out.seconds = time.monotonic() - start
    return out


def block_list_text(search: BlockSearch, where: str) -> str:
    """The failure's lines on the block list: the list (verified on ``where``) or why none was found."""
    if search.nodes is not None:
        shown = ", ".join(repr(n) for n in search.nodes[:8]) + (", ..." if len(search.nodes) > 8 else "")
        return (f"  keeping {len(search.nodes)} node(s) in float32 passes: node_block_list=[{shown}]\n"
                f"  (found by onnxconverter-common's auto_convert_mixed_precision search in {search.attempts} "
                f"attempts, {search.seconds:.0f} s; verified: the failing example passes {where} with it; the whole "
                "list is in details.precision_block_list)\n"
                "  fix: pass fp16_block_list=[...] to this check and the same node_block_list to your own "
                "convert_float_to_float16, or widen the fp16 tolerance if this error is acceptable")
    if search.stopped == "budget":
        return (f"  no float32 block list was found within the search's budget ({search.attempts} attempts, "
                f"{search.seconds:.0f} s)")
    return ("  no node_block_list passes: with every node kept float32 the converted graph still misses this example "
            "(the converter keeps float16 round trips between blocked nodes), so no block list can help; widen the "
            "fp16 tolerance for this model (tolerances=) if its float16 error is acceptable")
