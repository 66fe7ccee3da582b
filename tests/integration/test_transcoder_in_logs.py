"""The transcoder against real logs: either one reads a SQLite log the other wrote, and
the contexts use it by default (on either log backend)."""

from __future__ import annotations

import math
from pathlib import Path
from uuid import UUID

import pytest
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import JSONTranscoder, Transcoder

from contexts.sales import Sales
from tests.unit.test_transcoder import same
from toolkit.write.transcoder import OrjsonTranscoder


class Reading(Aggregate):
    class Taken(Aggregate.Created):
        value: float
        count: int

    @event(Taken)
    def __init__(self, value: float, count: int) -> None:
        self.value = value
        self.count = count


@pytest.mark.parametrize(
    ("writer", "reader"),
    [(JSONTranscoder, OrjsonTranscoder), (OrjsonTranscoder, JSONTranscoder)],
    ids=["eventsourcing-wrote", "toolkit-wrote"],
)
def test_a_log_written_by_either_transcoder_is_read_by_the_other(
    tmp_path: Path, writer: type[Transcoder], reader: type[Transcoder]
) -> None:
    """The README's promise: switching the transcoder either way keeps the log readable,
    NaN, infinity and big counts included."""

    def app(transcoder: type[Transcoder]) -> Application[UUID]:
        return Application(
            env={
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(tmp_path / "log.sqlite"),
                "TRANSCODER_TOPIC": f"{transcoder.__module__}:{transcoder.__qualname__}",
            }
        )

    values = [(math.nan, 2**64), (math.inf, -(10**40)), (-math.inf, 0), (0.25, 2**63 - 1)]
    with app(writer) as before:
        readings = [Reading(value, count) for value, count in values]
        before.save(*readings)
    with app(reader) as after:
        assert isinstance(after.mapper.transcoder, reader)
        for written, (value, count) in zip(readings, values, strict=True):
            read: Reading = after.repository.get(written.id)
            assert same([read.value, read.count], [value, count])


def test_contexts_use_it_by_default(sales: Sales) -> None:
    assert isinstance(sales.mapper.transcoder, OrjsonTranscoder)
