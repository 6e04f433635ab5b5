"""Fixtures shared by every test module (helpers live in tests/helpers.py and tests/broker.py)."""

from tests.broker import broker

__all__ = ["broker"]


def pytest_addoption(parser: object) -> None:
    parser.addoption(  # type: ignore[attr-defined]
        "--long", action="store_true", default=False, help="reliability suite: many more trials"
    )
