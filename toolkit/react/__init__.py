"""Policies: a context reacting to other contexts' events, exactly once.

A policy belongs to the consuming context. It reads foreign streams through its
translators (the anti-corruption layer) and, for each fact, runs commands on its own
context. The events the commands of one foreign message cause and a tracking record of
that message's stream sequence are written in one transaction of the context's log
(eventsourcing's process recorder), so a message's effects are stored once or not at
all, whatever crashes, and a restart goes on after the tracking record.

- :mod:`~toolkit.react.policy`: what a policy declares (:class:`Policy`);
- :mod:`~toolkit.react.runner`: applying stream messages to it (:class:`PolicyRunner`);
- :mod:`~toolkit.react.reactor`: following its streams over NATS (:class:`Reactor`,
  ``toolkit react <policy>``), parking what keeps failing with its aggregate;
- :mod:`~toolkit.react.deadletters`: its dead letters (:class:`PolicyDeadLetters`), with
  the aggregates they hold parked;
- :mod:`~toolkit.react.retries`: dead letters retried (each reaction stored once) or
  dropped (``toolkit dlq``);
- :mod:`~toolkit.react.lock`: one reactor per policy.
"""

from toolkit.react.policy import Policy
from toolkit.react.runner import Counts, PolicyRunner, Rejection

__all__ = ["Counts", "Policy", "PolicyRunner", "Rejection"]
