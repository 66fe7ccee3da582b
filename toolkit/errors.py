"""Errors a user of the toolkit can meet, each with a message that says what to do."""

from __future__ import annotations


class ToolkitError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class ConfigurationError(ToolkitError):
    """A setting is missing or malformed."""


class ServerVersionError(ToolkitError):
    """The NATS server is older than the toolkit supports."""


class ServerStartError(ToolkitError):
    """The embedded nats-server could not be started."""


class ConnectError(ToolkitError):
    """No NATS server could be reached."""


class ContractError(ToolkitError):
    """An integration event does not match its contract."""


class SubjectError(ToolkitError, ValueError):
    """A subject token is empty or would change what a subject matches."""


class RelayError(ToolkitError):
    """The relay could not carry the log onto the stream. A transient one (the server
    went away, an acknowledgement did not come) is retried by the relay itself."""

    def __init__(
        self,
        message: str,
        *,
        transient: bool = False,
        lost: bool = False,
        duplicate: tuple[int, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.lost = lost
        """The stream lost messages it had stored: publish them again under new ids."""
        self.duplicate = duplicate
        """(stream sequence, message id) of a duplicate acknowledgement that suggested
        the loss: if the stream holds that message there, another relay stored it."""


class RelayBusyError(RelayError):
    """Another relay of the context runs (see :mod:`toolkit.write.relay_lock`)."""


class PolicyBusyError(ToolkitError):
    """Another process runs the policy (see :mod:`toolkit.react.lock`)."""


class ProjectionError(ToolkitError):
    """A projection could not apply its stream."""


class InvalidCommand(ToolkitError, ValueError):
    """A command was rejected before anything was stored."""


class UnknownAggregate(InvalidCommand, LookupError):
    """A command names an aggregate the context does not have."""


class ConflictError(ToolkitError):
    """Another command changed the aggregate first; nothing of this one was stored."""


class PoisonMessage(ProjectionError):
    """A message whose handling raised: the projector retries it, then parks it."""

    def __init__(self, message: str, *, stream: str, sequence: int, cause: Exception) -> None:
        super().__init__(message)
        self.stream = stream
        self.sequence = sequence
        self.cause = cause


class BatchFailure(ProjectionError):
    """A batch failed but no single message of it fails on its own (the disk is full,
    the database is locked, a failure that went away): the projector retries it."""


class ProjectionVersionError(ProjectionError):
    """The stored read model was built by another version of the projection."""


class ProjectionBusyError(ProjectionError):
    """Another process is writing this projection."""


class MarkerError(ProjectionError):
    """A read model's marker (the generation readers use, or the one a replay builds)
    cannot be read: the message names it and says what to do."""
