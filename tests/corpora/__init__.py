"""What the model corpora (tests/hf, tests/libs) share: subset selection, declared defects, the matrix writer."""
