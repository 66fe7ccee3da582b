"""JetStream as the event store: a persistence module for ``eventsourcing``.

Select it with ``PERSISTENCE_MODULE=toolkit.logs.jetstream`` and ``NATS_URL``; a context's
log is then a JetStream stream instead of a SQLite file or a PostgreSQL table.

Layout. An application's events live in the stream ``<name>_log`` (``JETSTREAM_STREAM``
overrides it), one subject per aggregate: ``<name>_log.<aggregate-id>``, the id encoded by
:func:`toolkit.wire.encode_token` so that no id can add a token or a wildcard. Tracking
records of a process application live in the same stream under
``<name>_log.tracking.<application>`` (three tokens: never an aggregate's subject, and
never matched by ``<name>_log.*``, the filter of every notification read). Snapshots (and
any other purpose) get a stream of their own, ``<name>_log_snapshots``. The private log's
subjects start with ``<name>_log``, never with ``<name>.``, so they cannot collide with the
context's public stream; JetStream refuses to create a stream whose subjects overlap
another's, so a clash (a context named ``sales_log``) fails loudly at start.

Replicated streams. With ``JETSTREAM_REPLICAS`` above 1, direct gets may be answered by a
follower that has not applied the latest writes yet: reads are then eventually consistent,
while writes stay safe (the expected-sequence checks are made by the stream's leader), so a
stale read turns into a conflict on save, never into a lost update.

Split as eventsourcing splits its own persistence modules:

- :mod:`~toolkit.logs.jetstream.datastore`: the NATS connection, owned by a private event
  loop in a daemon thread (eventsourcing's recorders are synchronous, nats-py is asyncio);
- :mod:`~toolkit.logs.jetstream.messages`: what a message holds (``<version> <topic>``
  and the state) and what the server answers a save;
- :mod:`~toolkit.logs.jetstream.stream`: what every recorder shares: the stream, ids on
  subjects, reads, atomic appends under optimistic concurrency;
- :mod:`~toolkit.logs.jetstream.recorders`: the aggregate, application (with its live
  subscription), tracking and process recorders;
- :mod:`~toolkit.logs.jetstream.factory`: the infrastructure factory eventsourcing finds
  here (the one :class:`~eventsourcing.persistence.InfrastructureFactory` of this module).
"""

from __future__ import annotations

from eventsourcing.persistence import DatabaseError

from toolkit.logs.jetstream.datastore import (
    MIN_SERVER_VERSION,
    JetStreamDatastore,
    check_server_version,
)
from toolkit.logs.jetstream.factory import JetStreamFactory
from toolkit.logs.jetstream.messages import (
    BATCH_COMMIT,
    BATCH_ID,
    BATCH_SEQUENCE,
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    MAX_BATCH,
)
from toolkit.logs.jetstream.recorders import (
    JetStreamAggregateRecorder,
    JetStreamApplicationRecorder,
    JetStreamProcessRecorder,
    JetStreamSubscription,
    JetStreamTrackingRecorder,
)
from toolkit.logs.jetstream.stream import JetStreamRecorder

Factory = JetStreamFactory

__all__ = [
    "BATCH_COMMIT",
    "BATCH_ID",
    "BATCH_SEQUENCE",
    "EXPECTED_LAST_SUBJECT_SEQUENCE",
    "MAX_BATCH",
    "MIN_SERVER_VERSION",
    "DatabaseError",
    "Factory",
    "JetStreamAggregateRecorder",
    "JetStreamApplicationRecorder",
    "JetStreamDatastore",
    "JetStreamFactory",
    "JetStreamProcessRecorder",
    "JetStreamRecorder",
    "JetStreamSubscription",
    "JetStreamTrackingRecorder",
    "check_server_version",
]
