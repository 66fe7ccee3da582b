"""The example system's composition root: what the ``toolkit`` CLI runs by default."""

from __future__ import annotations

from contexts.sales import Sales
from contexts.sales.api import router as sales_api
from projections.billing import Accounts
from projections.billing.api import router as billing_api
from projections.notifications import confirmations
from projections.shipping import Shipments
from projections.shipping.api import router as shipping_api
from toolkit import System

system = System(
    contexts={"sales": Sales},
    projections={"shipping": Shipments, "billing": Accounts},
    routers={"shipping": shipping_api, "billing": billing_api},
    commands={"sales": sales_api},
    work_queues={"notifications": confirmations},
    title="Sales, shipping and billing",
)
