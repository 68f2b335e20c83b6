"""The Hugging Face corpus's model x backend matrix, as Markdown, from a pytest-deploy JSON report.

    python tests/hf/matrix.py hf-report.json                        # print it
    python tests/hf/matrix.py hf-report.json --write docs/hf-corpus.md  # replace the block between the markers
    python tests/hf/matrix.py hf-fp16-report.json --fp16 --write docs/hf-corpus.md  # the fp16 block
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for corpora

from corpora.matrix import render, write


def main(argv: list[str]) -> None:
    fp16 = "--fp16" in argv  # the fp16 run (make hf-corpus-fp16): onnx only, its own block in the doc
    argv = [a for a in argv if a != "--fp16"]
    if fp16:
        table = render(argv[0], backends=("onnx",), causes_intro="One line per declared defect:")
    else:
        table = render(argv[0], skip_causes=("script",),
                       causes_intro="One line per defect (script: every architecture, for the reason below):")
    if len(argv) == 3 and argv[1] == "--write":
        write(table, argv[2], "tests/hf/matrix.py --fp16" if fp16 else "tests/hf/matrix.py")
    else:
        print(table)


if __name__ == "__main__":
    main(sys.argv[1:])
