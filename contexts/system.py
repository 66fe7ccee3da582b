"""The example system's composition root: what the ``toolkit`` CLI runs by default."""

from __future__ import annotations

from contexts.billing import Billing
from contexts.billing.api import router as billing_commands
from contexts.billing.policy import InvoicePlacedOrders
from contexts.sales import Sales
from contexts.sales.api import router as sales_api
from contexts.sales.policy import MarkDispatchedOrdersShipped
from contexts.sales.queued import commands as sales_queue
from contexts.shipping import Shipping
from contexts.shipping.api import router as shipping_commands
from contexts.shipping.policy import ShipPlacedOrders
from projections.billing import Accounts
from projections.billing.api import invoices as invoices_api
from projections.billing.api import router as billing_api
from projections.billing.invoices import Invoices
from projections.notifications import confirmations
from projections.shipping import Shipments
from projections.shipping.api import dispatches as dispatches_api
from projections.shipping.api import router as shipping_api
from projections.shipping.dispatches import Dispatches
from toolkit import System

system = System(
    contexts={"sales": Sales, "shipping": Shipping, "billing": Billing},
    projections={
        "shipping": Shipments,
        "billing": Accounts,
        "dispatches": Dispatches,  # shipping's stream
        "invoices": Invoices,  # billing's stream
    },
    routers={
        "shipping": shipping_api,
        "billing": billing_api,
        "dispatches": dispatches_api,
        "invoices": invoices_api,
    },
    commands={"sales": sales_api, "shipping": shipping_commands, "billing": billing_commands},
    work_queues={"notifications": confirmations},
    command_queues={"sales": sales_queue},
    policies={
        "ship-orders": ShipPlacedOrders,
        "invoice-orders": InvoicePlacedOrders,
        "mark-shipped": MarkDispatchedOrdersShipped,
    },
    title="Sales, shipping and billing",
)
