"""The decision log's lines: every event type has one, owned by the stage that records it."""

from __future__ import annotations

import pytest

from healer.errors import HealerError
from healer.knowledge.events import EventType as T
from healer.knowledge.events import RecordedEvent
from healer.render import _registry, describe, level_of, lines


def rec(
    etype: str, data: dict[str, object], component: str | None = "svc", incident: int | None = 4
) -> RecordedEvent:
    return RecordedEvent(9, etype, 1000.0, component, incident, data)


def test_every_event_type_reads_as_a_line_of_its_own() -> None:
    """A new event type without a formatter would read as its bare type name in `healer log`."""
    missing = sorted(str(t.value) for t in T if t.value not in _registry())
    assert missing == []


def test_a_type_nobody_registered_still_says_what_it_carries() -> None:
    assert (
        describe(rec("made.up", {"b": 2, "a": "x", "nested": {"k": 1}}))
        == "[incident 4] svc: made.up (a=x, b=2)"
    )
    assert level_of(rec("made.up", {})) == "info"


def test_a_second_formatter_for_a_type_is_refused_by_name() -> None:
    with pytest.raises(HealerError, match=r"two formatters for incident\.detected"):
        lines(T.INCIDENT_DETECTED)(lambda r, who, inc: "")


def test_levels_can_depend_on_what_the_event_carries() -> None:
    assert level_of(rec(T.PROCESS_EXITED, {"pid": 3, "expected": True})) == "info"
    assert level_of(rec(T.PROCESS_EXITED, {"pid": 3, "signal": 9})) == "warning"
    assert level_of(rec(T.APPROVAL_GRANTED, {})) == "info"
    assert level_of(rec(T.APPROVAL_DENIED, {})) == "warning"


def test_objectives_read_as_achieved_against_target_and_a_miss_is_a_warning() -> None:
    met = rec(
        T.OBJECTIVES_MEASURED,
        {
            "rto_achieved": 2.314,
            "rto_target": 5.0,
            "rto_missed": False,
            "rpo_achieved": None,
            "rpo_target": None,
        },
    )
    assert describe(met) == "[incident 4] svc: objectives: RTO 2.31s (target 5s) met"
    assert level_of(met) == "info"
    missed = rec(
        T.OBJECTIVES_MEASURED,
        {
            "rto_achieved": 1.0,
            "rto_target": None,
            "rto_missed": False,
            "rpo_achieved": 90.0,
            "rpo_target": 60.0,
            "rpo_missed": True,
        },
    )
    assert describe(missed) == "[incident 4] svc: objectives: RTO 1.00s, RPO 90.00s (target 60s) MISSED"
    assert level_of(missed) == "warning"
