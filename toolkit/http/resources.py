"""A read-model table as a REST resource: one item by id, and lists with filters and
cursor pagination, declared rather than written.

    resource_router(home, path="/shipping/shipments", table="shipment", model=Shipment,
                    key="shipment_id", order_by="since", filters={"status": Status})

gives ``GET /shipping/shipments/{shipment_id}`` and
``GET /shipping/shipments?status=...&limit=...&cursor=...``, typed in the OpenAPI schema
by ``model``. Lists are paged by key set, not offset: the cursor names the last row
given (its ``order_by`` value and key), so a page costs the same however deep, and rows
added meanwhile are neither skipped nor repeated. Bodies are encoded by orjson straight
from the rows, whose columns are the model's fields; the model documents them.
"""

from __future__ import annotations

import base64
import binascii
import inspect
from collections.abc import Mapping
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Response
from pydantic import BaseModel, create_model

from toolkit.http.app import ReadModel
from toolkit.readmodels import Connection, Dialect

JSON = "application/json"


class CursorError(ValueError):
    pass


def encode_cursor(order_value: object, key_value: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([order_value, key_value])).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[Any, Any]:
    try:
        padded = text + "=" * (-len(text) % 4)
        value = orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeEncodeError, binascii.Error):
        value = None
    scalar = (str, int, float)
    if not (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, scalar) and _storable(v) for v in value)
    ):
        raise CursorError(f"cursor {text[:60]!r} is not one this API gave: start without one")
    return value[0], value[1]


def _storable(value: object) -> bool:
    """An integer a database's 64-bit columns hold (a cursor this API gave holds one)."""
    return not isinstance(value, int) or -(2**63) <= value < 2**63


def resource_router(
    home: Any,
    *,
    path: str,
    table: str,
    model: type[BaseModel],
    key: str,
    order_by: str | None = None,
    filters: Mapping[str, Any] | None = None,
    default_limit: int = 50,
    max_limit: int = 500,
    read_model: ReadModel | None = None,
) -> APIRouter:
    """Endpoints over ``table``, whose columns are ``model``'s fields. ``key`` is the
    item's id column (its type is the model field's); lists are sorted by ``order_by``
    then ``key``; ``filters`` maps query parameters (equal to columns of the same name)
    to their types, e.g. a ``Literal`` of the allowed values."""
    fields = model.model_fields
    filters = dict(filters or {})
    order = order_by or key
    for column in (key, order, *filters):
        if column not in fields:
            raise ValueError(f"{column!r} is not a field of {model.__name__}")
    columns = ", ".join(fields)
    name = path.strip("/").replace("/", "_")
    page_model = create_model(
        f"{model.__name__}Page",
        items=(list[model], ...),  # type: ignore[valid-type]
        next=(str | None, None),
    )
    page_model.__doc__ = f"A page of {model.__name__} items; `next` is the cursor of the next."
    api = APIRouter(tags=[path.strip("/").split("/")[0]])
    Db = Annotated[Connection, Depends(read_model or ReadModel(home))]

    def param(db: Connection) -> str:
        return getattr(db, "dialect", Dialect.SQLITE).param

    def answer(body: object, response: Response) -> Response:
        """The body as JSON, with the headers the read-model dependency set (ETag...)."""
        out = Response(orjson.dumps(body), media_type=JSON)
        for header, value in response.headers.items():
            if header not in ("content-length", "content-type"):
                out.headers[header] = value
        return out

    def get_item(db: Connection, response: Response, **path_params: Any) -> Response:
        item_id = path_params[key]
        row = db.execute(
            f"SELECT {columns} FROM {table} WHERE {key} = {param(db)}", (str(item_id),)
        ).fetchone()
        if row is None:
            raise HTTPException(404, f"no {model.__name__.lower()} {item_id}")
        return answer(dict(zip(fields, row, strict=True)), response)

    get_item.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                key, inspect.Parameter.KEYWORD_ONLY, annotation=fields[key].annotation
            ),
            inspect.Parameter("db", inspect.Parameter.KEYWORD_ONLY, annotation=Db),
            inspect.Parameter("response", inspect.Parameter.KEYWORD_ONLY, annotation=Response),
        ]
    )
    api.add_api_route(
        f"{path}/{{{key}}}",
        get_item,
        methods=["GET"],
        response_model=model,
        name=f"get_{name}_item",
        summary=f"One {model.__name__} by {key}",
        responses={404: {"description": f"no such {model.__name__}"}},
    )

    def list_items(
        db: Connection, response: Response, limit: int, cursor: str | None, **chosen: Any
    ) -> Response:
        p = param(db)
        where, values = [], []
        for column, value in chosen.items():
            if value is not None:
                where.append(f"{column} = {p}")
                values.append(value if isinstance(value, int | float) else str(value))
        if cursor is not None:
            try:
                after_order, after_key = decode_cursor(cursor)
            except CursorError as exc:
                raise HTTPException(400, str(exc)) from None
            where.append(f"({order} > {p} OR ({order} = {p} AND {key} > {p}))")
            values += [after_order, after_order, after_key]
        sql = f"SELECT {columns} FROM {table}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {order}, {key} LIMIT {int(limit) + 1}"
        rows = db.execute(sql, tuple(values)).fetchall()
        items = [dict(zip(fields, row, strict=True)) for row in rows[:limit]]
        following = None
        if len(rows) > limit:
            last = items[-1]
            following = encode_cursor(last[order], last[key])
        page = answer({"items": items, "next": following}, response)
        if following is not None:
            page.headers["Link"] = f'<{path}?cursor={following}&limit={limit}>; rel="next"'
        return page

    def list_endpoint(
        db: Connection, response: Response, limit: int, cursor: str | None = None, **kw: Any
    ) -> Response:
        return list_items(db, response, limit, cursor, **kw)

    list_endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("db", inspect.Parameter.KEYWORD_ONLY, annotation=Db),
            inspect.Parameter("response", inspect.Parameter.KEYWORD_ONLY, annotation=Response),
            inspect.Parameter(
                "limit",
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[int, Query(ge=1, le=max_limit)],
                default=default_limit,
            ),
            inspect.Parameter(
                "cursor",
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[
                    str | None,
                    Query(max_length=512, description="`next` of the previous page"),
                ],
                default=None,
            ),
            *(
                inspect.Parameter(
                    column,
                    inspect.Parameter.KEYWORD_ONLY,
                    annotation=Annotated[kind | None, Query()],
                    default=None,
                )
                for column, kind in filters.items()
            ),
        ]
    )
    api.add_api_route(
        path,
        list_endpoint,
        methods=["GET"],
        response_model=page_model,
        name=f"list_{name}",
        summary=f"{model.__name__} items, {order} then {key} order, a page at a time",
        responses={400: {"description": "an unknown parameter or a cursor not given here"}},
    )
    return api
