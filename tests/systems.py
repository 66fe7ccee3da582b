"""Systems the CLI tests run: the example one with the next version of shipping."""

from __future__ import annotations

from typing import ClassVar

from contexts.sales import Sales
from projections.shipping import Shipments
from toolkit.system import System


class ShipmentsV2(Shipments):
    version: ClassVar[int] = 2


shipping_v2 = System(contexts={"sales": Sales}, projections={"shipping": ShipmentsV2})
