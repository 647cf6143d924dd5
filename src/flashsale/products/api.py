from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response, status

from flashsale.deps import AdminOnly, Db
from flashsale.errors import Unauthorized, ValidationFailed
from flashsale.products import service
from flashsale.products.schemas import Product, ProductCreate, ProductList, ProductUpdate
from flashsale.schemas import Limit, Offset, RowId
from flashsale.web.errors import documented

router = APIRouter(prefix="/products", tags=["products"])

ProductId = Annotated[RowId, Path(description="Product id")]
# An ETag as we send it ("3", optionally weak), or the bare version number.
_ETAG = re.compile(r'^\s*(?:W/)?(?:"(\d{1,18})"|(\d{1,18}))\s*$')


def _etag(product: Product) -> str:
    return f'"{product.version}"'


def _parse_if_match(value: str) -> int:
    match = _ETAG.match(value)
    if match is None:
        raise ValidationFailed(
            'If-Match must be the product\'s version, e.g. If-Match: "3"',
            details=[{"field": "If-Match", "message": "not a version"}],
        )
    return int(match.group(1) or match.group(2))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=documented(ValidationFailed, Unauthorized),
    dependencies=[AdminOnly],
    summary="Create a product",
)
async def create_product(body: ProductCreate, database: Db, response: Response) -> Product:
    async with database.connection() as conn:
        product = await service.create_product(conn, data=body)
    response.headers["Location"] = f"/products/{product.id}"
    response.headers["ETag"] = _etag(product)
    return product


@router.get("", responses=documented(ValidationFailed), summary="List products by id")
async def list_products(
    database: Db, limit: Annotated[Limit, Query()] = 20, offset: Annotated[Offset, Query()] = 0
) -> ProductList:
    async with database.connection() as conn:
        products = await service.list_products(conn, limit=limit, offset=offset)
    return ProductList(products=products, limit=limit, offset=offset)


@router.get(
    "/{product_id}",
    responses=documented(ValidationFailed, service.ProductNotFound),
    summary="Get a product (with its ETag)",
)
async def get_product(product_id: ProductId, database: Db, response: Response) -> Product:
    async with database.connection() as conn:
        product = await service.get_product(conn, product_id=product_id)
    response.headers["ETag"] = _etag(product)
    return product


@router.patch(
    "/{product_id}",
    responses=documented(
        ValidationFailed,
        Unauthorized,
        service.ProductNotFound,
        service.VersionConflict,
        service.VersionRequired,
    ),
    dependencies=[AdminOnly],
    summary="Change name, price or stock under optimistic locking",
)
async def update_product(
    product_id: ProductId,
    body: ProductUpdate,
    database: Db,
    response: Response,
    if_match: Annotated[
        str | None, Header(description="The version you read (from GET's ETag)")
    ] = None,
) -> Product:
    if if_match is None:
        raise service.VersionRequired()
    async with database.connection() as conn:
        product = await service.update_product(
            conn, product_id=product_id, expected_version=_parse_if_match(if_match), changes=body
        )
    response.headers["ETag"] = _etag(product)
    return product
