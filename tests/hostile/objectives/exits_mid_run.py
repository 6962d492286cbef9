"""A hostile objective module (tests/scenarios/test_hostile.py)."""

import sys


def score(ex, out):
    sys.exit(0)
