"""The corpus beyond transformers: its model x backend matrix, as Markdown, from a pytest-deploy JSON report.

    python tests/libs/matrix.py libs-report.json                          # print it
    python tests/libs/matrix.py libs-report.json --write docs/libs-corpus.md  # replace the block between the markers
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for corpora and libs

from corpora.matrix import render, write

from libs.zoo import MODELS


def main(argv: list[str]) -> None:
    table = render(argv[0], groups={m.name: m.library for m in MODELS})
    if len(argv) == 3 and argv[1] == "--write":
        write(table, argv[2], "tests/libs/matrix.py")
    else:
        print(table)


if __name__ == "__main__":
    main(sys.argv[1:])
