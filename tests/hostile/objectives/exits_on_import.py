"""A hostile objective module (tests/scenarios/test_hostile.py)."""

import sys

sys.exit(3)


def score(e, o):
    return []
