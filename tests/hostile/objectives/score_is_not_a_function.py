"""A hostile objective module (tests/scenarios/test_hostile.py)."""

score = 42
