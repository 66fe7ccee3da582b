"""What a policy declares: its name, the foreign streams it reads (through translators
of its own) and its reaction to each fact, in commands on its own context."""

from __future__ import annotations

from typing import Any, ClassVar, Generic, get_args, get_origin

from typing_extensions import TypeVar

from toolkit.errors import ConfigurationError
from toolkit.read.translator import Translator
from toolkit.wire import check_name
from toolkit.write.context import BoundedContext

C = TypeVar("C", bound=BoundedContext[Any])


class Policy(Generic[C]):
    """Base for a policy of context ``C``: set ``name`` and ``translators`` and write
    :meth:`react`::

        class Shipments(Policy[Shipping]):
            name = "shipments"
            translators = (sales,)

            def react(self, fact: object, shipping: Shipping) -> None:
                if isinstance(fact, OrderAccepted):
                    shipping.create_shipment(fact.order_id)

    A reaction runs commands and nothing else that leaves a trace: it may run again
    after a crash before its effects were stored (they never are twice), and its
    effects are the commands' saved events only.
    """

    name: ClassVar[str]
    translators: ClassVar[tuple[Translator, ...]] = ()
    context: ClassVar[str | None] = None
    """The name of the context it runs on, in its System; None (the default): the
    ``name`` of the context class it is a policy of (``Policy[Shipping]``: Shipping's)."""
    retries: ClassVar[int] = 3
    """Tries after the first before a message whose reaction keeps failing is parked."""
    retry_delay: ClassVar[float] = 0.2
    """Seconds before the first retry; doubled for each next one."""
    slices: ClassVar[int | None] = None
    """How many slices its streams are cut into, by the message's aggregate, for any
    number of ``toolkit react`` workers to share by lease (:mod:`toolkit.react.slices`):
    each slice is reacted to in order by one worker at a time, each with a tracking record
    of its own. Chosen once, and recorded in the context's log: it cannot change (nor go
    back to None) after a worker ran. None (the default): one reactor at a time."""

    def __init__(self) -> None:
        name = getattr(self, "name", None)
        if name is None:
            raise ConfigurationError(f"policy {type(self).__name__} has no name")
        check_name("policy", name)
        if not self.translators:
            raise ConfigurationError(f"policy {name} reads no stream: give it translators")
        streams = [translator.stream for translator in self.translators]
        if len(set(streams)) != len(streams):
            raise ConfigurationError(f"policy {name} has two translators of one stream")
        self._translators = {translator.stream: translator for translator in self.translators}
        if self.slices is not None and (
            isinstance(self.slices, bool) or not isinstance(self.slices, int) or self.slices < 1
        ):
            raise ConfigurationError(
                f"policy {name}: slices must be a whole number of 1 or more, not {self.slices!r}"
            )

    @property
    def streams(self) -> list[str]:
        """The foreign streams it reads."""
        return list(self._translators)

    def translator(self, stream: str) -> Translator:
        """Its translator of ``stream``."""
        try:
            return self._translators[stream]
        except KeyError:
            raise ConfigurationError(f"policy {self.name} does not read stream {stream}") from None

    def tracking_name(self, stream: str) -> str:
        """The name its tracking records of ``stream`` have in the context's log."""
        return f"{self.name}:{stream}"

    def slice_tracking_name(self, stream: str, slice_: int) -> str:
        """The name of the tracking record of slice ``slice_`` of ``stream``."""
        return f"{self.tracking_name(stream)}#{slice_}"

    def cut_tracking_name(self, stream: str) -> str:
        """The name of the record of how many slices ``stream`` was cut into (its
        position is the count)."""
        return f"{self.tracking_name(stream)}#slices"

    def retry_tracking_name(self, stream: str, sequence: int) -> str:
        """The name of the tracking record of a retry of its dead letter at ``sequence``
        of ``stream``: one per message, so a retry is recorded once (see
        :meth:`toolkit.react.runner.PolicyRunner.retry`)."""
        return f"{self.tracking_name(stream)}:retry:{sequence}"

    def react(self, fact: object, context: C) -> None:
        """Run the commands ``fact`` calls for on ``context``. A command refused with
        :class:`~toolkit.errors.InvalidCommand` makes the whole message a rejection:
        nothing of it is stored, its reason is kept, and the policy moves on."""
        raise NotImplementedError

    @classmethod
    def context_class(cls) -> type[BoundedContext[Any]] | None:
        """The context class it is a policy of (``C``), when its class says it."""
        for klass in cls.__mro__:
            for base in getattr(klass, "__orig_bases__", ()):
                origin = get_origin(base)
                if isinstance(origin, type) and issubclass(origin, Policy):
                    (argument,) = get_args(base) or (None,)
                    if isinstance(argument, type) and issubclass(argument, BoundedContext):
                        return argument
        return None

    @classmethod
    def context_name(cls) -> str:
        """The name of the context it runs on: :attr:`context`, else its context class's."""
        if cls.context is not None:
            return cls.context
        context = cls.context_class()
        name = getattr(context, "name", None)
        if not isinstance(name, str):
            raise ConfigurationError(
                f"policy {cls.__name__} names no context: set context = '<name>' on it, "
                "or make it a Policy[<context class>] of a context with a name"
            )
        return name
