"""A hostile objective module (tests/scenarios/test_hostile.py)."""


def other(e, o):
    return [1.0] * len(e)
