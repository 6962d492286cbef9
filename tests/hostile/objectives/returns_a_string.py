"""A hostile objective module (tests/scenarios/test_hostile.py)."""


def score(ex, out):
    return "1111"
