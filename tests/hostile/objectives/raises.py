"""A hostile objective module (tests/scenarios/test_hostile.py)."""


def score(ex, out):
    raise KeyError("label")
