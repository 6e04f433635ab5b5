"""Fixtures shared by every test module (helpers live in tests/helpers.py and tests/broker.py)."""

from tests.broker import broker

__all__ = ["broker"]
