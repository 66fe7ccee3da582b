"""Sales' command endpoints. (No `from __future__ import annotations`: FastAPI reads
these annotations at runtime.)

Each command answers with a consistency token: a read of another context's projection
that sends it back in ``Consistency-Token`` sees this command's effect, or is told how
far the projection has got. Nothing here calls another context.
"""

from collections.abc import Callable
from decimal import Decimal
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Body, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field

from contexts.sales.application import MAX_LINES, Sales
from contexts.sales.queued import commands as queued
from toolkit import (
    CONSISTENCY_HEADER,
    MAX_ID_TOKEN,
    ConflictError,
    InvalidCommand,
    UnknownAggregate,
    command_queue_router,
)
from toolkit.http.consistency import run_command as in_thread

SKU_DESCRIPTION = (
    "the product's id: any text, at most 1024 characters once percent-encoded for a NATS "
    "subject (letters, digits, `_` and `-` take one each, other characters three for each "
    "UTF-8 byte: 113 CJK characters), not empty, no NUL"
)


class Command(BaseModel):
    """A command body as strict as the query parameters: no field of another type is
    coerced (``"quantity": "2"`` and ``2.0`` are refused) and an unknown field is refused,
    422 naming it, rather than dropped. Ids and prices are the exceptions, with
    ``strict=False``: JSON has no UUID or decimal, so they come as text (or a number)."""

    model_config = ConfigDict(strict=True, extra="forbid")


class NewCustomer(Command):
    name: str = Field(min_length=1, max_length=200)
    email: str = Field(min_length=3, max_length=254)


class Line(Command):
    sku: str = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1, le=10_000)
    unit_price: Decimal = Field(ge=0, max_digits=12, decimal_places=2, strict=False)


class NewOrder(Command):
    customer_id: UUID = Field(strict=False)
    lines: list[Line] = Field(min_length=1, max_length=MAX_LINES)


class Cancellation(Command):
    reason: str = Field(min_length=1, max_length=500)


class NewProduct(Command):
    sku: str = Field(max_length=MAX_ID_TOKEN, description=SKU_DESCRIPTION)
    name: str = Field(min_length=1, max_length=200)
    unit_price: Decimal = Field(ge=0, max_digits=12, decimal_places=2, strict=False)


class Repricing(Command):
    sku: str = Field(max_length=MAX_ID_TOKEN, description=SKU_DESCRIPTION)
    unit_price: Decimal = Field(ge=0, max_digits=12, decimal_places=2, strict=False)


TOKEN_DESCRIPTION = (
    "send it back in the `Consistency-Token` header of a read to see this command's effect "
    "(`<context>:<log position>`)"
)


class Accepted(BaseModel):
    id: UUID
    consistency_token: str = Field(description=TOKEN_DESCRIPTION)


class ProductAccepted(BaseModel):
    sku: str
    consistency_token: str = Field(description=TOKEN_DESCRIPTION)


_ERRORS: dict[int | str, dict[str, str]] = {
    404: {"description": "the order does not exist"},
    409: {"description": "the aggregate was changed by another command at the same time"},
    422: {"description": "the command is invalid; nothing was stored"},
}


def router(sales: Sales) -> APIRouter:
    """Sales' commands run in the request (201 with a consistency token), and the
    same ones queued (``/sales/commands/...``: 202, a status resource, run by
    ``toolkit commands sales``)."""
    api = APIRouter(prefix="/sales", tags=["sales"], responses=_ERRORS)
    api.include_router(command_queue_router(queued, prefix="/commands"))

    async def run(
        response: Response, command: Callable[..., object], *args: object, unknown: int = 422
    ) -> Accepted:
        """Run a command; an unknown aggregate is 404 when the path names it (``unknown``),
        422 when the body does."""
        result, token = await run_command(response, command, *args, unknown=unknown)
        aggregate_id = result if isinstance(result, UUID) else args[0]
        assert isinstance(aggregate_id, UUID)
        return Accepted(id=aggregate_id, consistency_token=token)

    async def run_command(
        response: Response, command: Callable[..., object], *args: object, unknown: int
    ) -> tuple[object, str]:
        """The command's result and consistency token (also set in ``response``), the
        command run on a thread of the toolkit's pool (``toolkit.http.consistency``)."""
        try:
            result, token = await in_thread(sales, command, *args)
        except UnknownAggregate as exc:
            raise HTTPException(unknown, str(exc)) from None
        except InvalidCommand as exc:
            raise HTTPException(422, str(exc)) from None
        except ConflictError as exc:
            raise HTTPException(409, str(exc)) from None
        response.headers[CONSISTENCY_HEADER] = str(token)
        return result, str(token)

    @api.post("/customers", status_code=201)
    async def register_customer(customer: NewCustomer, response: Response) -> Accepted:
        return await run(response, sales.register_customer, customer.name, customer.email)

    @api.post("/orders", status_code=201)
    async def place_order(order: NewOrder, response: Response) -> Accepted:
        lines = [line.model_dump() for line in order.lines]
        return await run(response, sales.place_order, order.customer_id, lines)

    @api.post("/orders/{order_id}/cancellation")
    async def cancel_order(
        order_id: UUID, cancellation: Annotated[Cancellation, Body()], response: Response
    ) -> Accepted:
        return await run(response, sales.cancel_order, order_id, cancellation.reason, unknown=404)

    @api.post("/products", status_code=201, responses={409: {"description": "listed already"}})
    async def list_product(product: NewProduct, response: Response) -> ProductAccepted:
        """List a product under its SKU. SKUs go in bodies, not paths: any text is one."""
        command = sales.list_product
        _, token = await run_command(
            response, command, product.sku, product.name, product.unit_price, unknown=422
        )
        return ProductAccepted(sku=product.sku, consistency_token=token)

    @api.post("/products/repricing")
    async def reprice_product(repricing: Repricing, response: Response) -> ProductAccepted:
        _, token = await run_command(
            response, sales.reprice_product, repricing.sku, repricing.unit_price, unknown=422
        )
        return ProductAccepted(sku=repricing.sku, consistency_token=token)

    return api
