from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response, status

from flashsale.access.control import AccessRoute, Forbidden, OperatorOnly
from flashsale.deps import Db
from flashsale.errors import Unauthorized, ValidationFailed
from flashsale.products import service
from flashsale.products.schemas import Product, ProductCreate, ProductList, ProductUpdate
from flashsale.schemas import Limit, Offset, RowId
from flashsale.web.errors import documented

router = APIRouter(prefix="/products", tags=["products"], route_class=AccessRoute)

ProductId = Annotated[RowId, Path(description="Product id")]
# One entity tag as we send it ("3", or weak W/"3"), or the bare version number (README).
_ENTITY_TAG = re.compile(r'(W/)?"(\d{1,18})"|(\d{1,18})')


def _etag(product: Product) -> str:
    return f'"{product.version}"'


def _entity_tags(value: str) -> list[tuple[bool, int]] | None:
    """An If-Match or If-None-Match value (RFC 9110): None for `*`, else its entity tags as
    (weak, version). ValueError when it is not a list of our tags."""
    if value.strip() == "*":
        return None
    tags = []
    for part in value.split(","):
        match = _ENTITY_TAG.fullmatch(part.strip())
        if match is None:
            raise ValueError(part)
        tags.append((match.group(1) is not None, int(match.group(2) or match.group(3))))
    return tags


def _if_match_versions(value: str) -> list[int] | None:
    """The versions a PATCH may apply to: None for `*` (any); strong comparison, so a weak tag
    matches none (RFC 9110 13.1.1)."""
    try:
        tags = _entity_tags(value)
    except ValueError:
        raise ValidationFailed(
            'If-Match must be the product\'s ETag (e.g. If-Match: "3"), a list of them, or *',
            details=[{"field": "If-Match", "message": "not a version"}],
        ) from None
    return None if tags is None else [version for weak, version in tags if not weak]


def _none_match(value: str | None, product: Product) -> bool:
    """Whether If-None-Match names the product's current ETag (weak comparison); a value that
    is not a list of our tags names nothing."""
    if value is None:
        return False
    try:
        tags = _entity_tags(value)
    except ValueError:
        return False
    return tags is None or any(version == product.version for _, version in tags)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=documented(ValidationFailed, Unauthorized, Forbidden),
    dependencies=[OperatorOnly],
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
    response_model=Product,
    responses={
        304: {"description": "Not modified: If-None-Match names the current ETag"},
        **documented(ValidationFailed, service.ProductNotFound),
    },
    summary="Get a product (with its ETag)",
)
async def get_product(
    product_id: ProductId,
    database: Db,
    response: Response,
    if_none_match: Annotated[
        str | None, Header(description="ETags you hold: 304 when one is current")
    ] = None,
) -> Any:
    async with database.connection() as conn:
        product = await service.get_product(conn, product_id=product_id)
    if _none_match(if_none_match, product):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": _etag(product)})
    response.headers["ETag"] = _etag(product)
    return product


@router.patch(
    "/{product_id}",
    responses=documented(
        ValidationFailed,
        Unauthorized,
        Forbidden,
        service.ProductNotFound,
        service.VersionConflict,
        service.VersionRequired,
    ),
    dependencies=[OperatorOnly],
    summary="Change name, price or stock under optimistic locking",
)
async def update_product(
    product_id: ProductId,
    body: ProductUpdate,
    database: Db,
    response: Response,
    if_match: Annotated[
        str | None,
        Header(description="The ETag you read (from GET), a list of ETags, or * for any"),
    ] = None,
) -> Product:
    if if_match is None:
        raise service.VersionRequired()
    async with database.connection() as conn:
        product = await service.update_product(
            conn,
            product_id=product_id,
            expected_versions=_if_match_versions(if_match),
            changes=body,
        )
    response.headers["ETag"] = _etag(product)
    return product
