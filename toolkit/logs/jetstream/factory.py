"""The JetStream log's infrastructure factory: its environment, its datastore, and a
recorder for each of eventsourcing's purposes."""

from __future__ import annotations

from typing import TypeVar

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    ProcessRecorder,
    ProgrammingError,
)
from eventsourcing.utils import Environment, EnvType, resolve_topic, strtobool
from nats.js.api import StorageType

from toolkit.logs.jetstream.datastore import JetStreamDatastore
from toolkit.logs.jetstream.recorders import (
    JetStreamAggregateRecorder,
    JetStreamApplicationRecorder,
    JetStreamProcessRecorder,
    JetStreamTrackingRecorder,
)
from toolkit.logs.jetstream.stream import STREAM_NAME

T = TypeVar("T")


class JetStreamFactory(InfrastructureFactory[JetStreamTrackingRecorder]):
    """eventsourcing's infrastructure on JetStream. Environment:

    - ``NATS_URL`` (required): the server(s), e.g. ``nats://127.0.0.1:4222``;
    - ``JETSTREAM_STREAM``: the log stream (default ``<application name>_log``);
    - ``JETSTREAM_REPLICAS`` (1), ``JETSTREAM_STORAGE`` (``file`` or ``memory``);
    - ``JETSTREAM_TIMEOUT`` (5 seconds): for each acknowledgement or read;
    - ``ORIGINATOR_ID_TYPE`` (``uuid`` or ``text``), ``CREATE_TABLE`` (create the
      streams, default yes), as for eventsourcing's SQL modules.
    """

    __module__ = "toolkit.logs.jetstream"
    """Where users select it (``PERSISTENCE_MODULE``): its topic (eventsourcing's
    ``get_topic``) stays ``toolkit.logs.jetstream:JetStreamFactory``."""

    NATS_URL = "NATS_URL"
    JETSTREAM_STREAM = "JETSTREAM_STREAM"
    JETSTREAM_REPLICAS = "JETSTREAM_REPLICAS"
    JETSTREAM_STORAGE = "JETSTREAM_STORAGE"
    JETSTREAM_TIMEOUT = "JETSTREAM_TIMEOUT"
    ORIGINATOR_ID_TYPE = "ORIGINATOR_ID_TYPE"
    CREATE_TABLE = "CREATE_TABLE"

    aggregate_recorder_class = JetStreamAggregateRecorder
    application_recorder_class = JetStreamApplicationRecorder
    tracking_recorder_class = JetStreamTrackingRecorder
    process_recorder_class = JetStreamProcessRecorder

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        url = self.env.get(self.NATS_URL)
        if not url:
            keys = ", ".join(self.env.create_keys(self.NATS_URL))
            raise OSError(f"NATS server URL not found in environment with keys: {keys}")
        storage = (self.env.get(self.JETSTREAM_STORAGE) or "file").lower()
        if storage not in ("file", "memory"):
            raise OSError(f"{self.JETSTREAM_STORAGE} must be 'file' or 'memory', not {storage!r}")
        id_type = (self.env.get(self.ORIGINATOR_ID_TYPE) or "uuid").lower()
        if id_type not in ("uuid", "text"):
            raise OSError(f"{self.ORIGINATOR_ID_TYPE} must be 'uuid' or 'text', not {id_type!r}")
        try:
            replicas = int(self.env.get(self.JETSTREAM_REPLICAS) or 1)
            timeout = float(self.env.get(self.JETSTREAM_TIMEOUT) or 5.0)
        except ValueError as exc:
            raise OSError(f"invalid JetStream setting: {exc}") from None
        self.datastore = JetStreamDatastore(
            url,
            timeout=timeout,
            replicas=replicas,
            storage=StorageType.MEMORY if storage == "memory" else StorageType.FILE,
            originator_id_type=id_type,
            name=self.env.name or "eventsourcing",
        )

    def stream_name(self, purpose: str = "events") -> str:
        name = self.env.get(self.JETSTREAM_STREAM) or f"{self.env.name or 'eventsourcing'}_log"
        if not STREAM_NAME.fullmatch(name):
            raise OSError(
                f"{name!r} cannot name a JetStream stream (letters, digits, '_' and '-'): "
                f"set {self.JETSTREAM_STREAM}"
            )
        return name if purpose == "events" else f"{name}_{purpose}"

    def env_create_table(self) -> bool:
        return bool(strtobool(self.env.get(self.CREATE_TABLE) or "yes"))

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        return self.aggregate_recorder_class(
            self.datastore, self.stream_name(purpose), create=self.env_create_table()
        )

    def application_recorder(self) -> ApplicationRecorder:
        cls = self._resolve(self.APPLICATION_RECORDER_TOPIC, self.application_recorder_class)
        return cls(self.datastore, self.stream_name(), create=self.env_create_table())

    def tracking_recorder(
        self, tracking_recorder_class: type[JetStreamTrackingRecorder] | None = None
    ) -> JetStreamTrackingRecorder:
        cls = tracking_recorder_class or self._resolve(
            self.TRACKING_RECORDER_TOPIC, self.tracking_recorder_class
        )
        return cls(self.datastore, self.stream_name(), create=self.env_create_table())

    def process_recorder(self) -> ProcessRecorder:
        cls = self._resolve(self.PROCESS_RECORDER_TOPIC, self.process_recorder_class)
        return cls(self.datastore, self.stream_name(), create=self.env_create_table())

    def _resolve(self, key: str, default: type[T]) -> type[T]:
        topic = self.env.get(key)
        if not topic:
            return default
        cls: type[T] = resolve_topic(topic)
        if not issubclass(cls, default):
            raise ProgrammingError(f"{topic} is not a {default.__name__}")
        return cls

    def close(self) -> None:
        self.datastore.close()
