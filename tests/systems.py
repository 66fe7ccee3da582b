"""Systems the CLI tests run: the example one with the next version of shipping; sales
with billing and a sliced ledger, for workers of sliced projections on a cluster."""

from __future__ import annotations

import os
from typing import ClassVar

from contexts.sales import Sales
from projections.billing import Accounts
from projections.shipping import Shipments
from tests.ledger import Ledger
from toolkit.system import System


class ShipmentsV2(Shipments):
    version: ClassVar[int] = 2


shipping_v2 = System(contexts={"sales": Sales}, projections={"shipping": ShipmentsV2})


class OrderLedger(Ledger):
    """Every order event once (UNIQUE (order_id, kind): applying one twice fails loudly),
    numbered in the order applied, with the pid of the worker process that applied it: a
    model that records the order it saw, cut into 16 slices by aggregate."""

    slices: ClassVar[int | None] = 16

    def __init__(self) -> None:
        super().__init__(os.getpid())


sliced_sales = System(
    contexts={"sales": Sales}, projections={"billing": Accounts, "ledger": OrderLedger}
)
"""What ``toolkit project billing`` and ``toolkit project ledger`` run as workers sharing
slices (tests/faults/test_cluster_slices.py)."""
