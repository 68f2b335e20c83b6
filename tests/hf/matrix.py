"""The Hugging Face corpus's model x backend matrix, as Markdown, from a pytest-deploy JSON report.

    python tests/hf/matrix.py hf-report.json                        # print it
    python tests/hf/matrix.py hf-report.json --write docs/hf-corpus.md  # replace the block between the markers
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for corpora

from corpora.matrix import render, write


def main(argv: list[str]) -> None:
    table = render(argv[0], skip_causes=("script",),
                   causes_intro="One line per defect (script: every architecture, for the reason below):")
    if len(argv) == 3 and argv[1] == "--write":
        write(table, argv[2], "tests/hf/matrix.py")
    else:
        print(table)


if __name__ == "__main__":
    main(sys.argv[1:])
