"""Who may call which route: one table of rules, applied before a request's body is read.

Credentials: `Authorization: Bearer <secret>`, where the secret is an operator key (API_KEYS /
API_KEY) or, with BUYER_AUTH=jwt, a buyer's access token. What a route needs (`Need`):

| need          | operator key                  | buyer token | nothing presented                  |
|---------------|-------------------------------|-------------|------------------------------------|
| OPERATOR      | viewer: reads; admin: all     | 401         | 401 (open when no key is set)      |
| READ_ORDER    | any order                     | own only    | jwt: 401; none: allowed (seed)     |
| LIST_ORDERS   | every order                   | own only    | jwt: 401; none: 401 unless open    |

"Open" is a server without operator keys: loopback only (`access/exposure.py` refuses to start
otherwise, unless ALLOW_OPEN_ADMIN=true); there anyone is an admin, as in the seed. A route
declares its need with one dependency (`OperatorOnly`, `OrderReader`, `OrderLister`), which also
documents the security scheme in OpenAPI; `AccessRoute` applies it before FastAPI reads the
body, so an unauthenticated request gets 401 before any JSON error. POST /orders checks buyers
itself (`orders/hot_path.py`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import Scope

from flashsale.access.buyers import BuyerTokens, Unauthenticated
from flashsale.access.operators import OperatorKeys, Role
from flashsale.errors import AppError, Unauthorized

_PRINCIPAL = "flashsale.principal"
_READS = frozenset({"GET", "HEAD"})


class Forbidden(AppError):
    status_code = 403
    code = "FORBIDDEN"
    message = "These credentials do not allow this request"


class BuyerMismatch(Forbidden):
    code = "BUYER_MISMATCH"
    message = "buyer_id must be the buyer token's sub, or be left out"
    refusal = "buyer_mismatch"


@dataclass(frozen=True, slots=True)
class Operator:
    name: str
    role: Role


@dataclass(frozen=True, slots=True)
class Buyer:
    buyer_id: str  # the verified token's `sub`


@dataclass(frozen=True, slots=True)
class Anonymous:
    """Nothing presented, on a route that allows it (an order read by id, BUYER_AUTH=none)."""


def own_orders_only(principal: Principal) -> str | None:
    """The buyer whose orders alone `principal` may read; None: it may read every order."""
    return principal.buyer_id if isinstance(principal, Buyer) else None


# Anyone, on a server without operator keys.
OPEN_ADMIN = Operator("anonymous", "admin")
Principal = Operator | Buyer | Anonymous


class Need(enum.Enum):
    OPERATOR = "operator"  # viewer for reads, admin for writes
    READ_ORDER = "read_order"
    LIST_ORDERS = "list_orders"


def bearer_token(scope: Scope) -> str | None:
    """The credential of `Authorization: Bearer <credential>`; None when there is no header.
    Another scheme or an empty credential is a credential nobody has (refused as invalid)."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credential = value.decode("latin-1").partition(" ")
            return credential.strip() if scheme.lower() == "bearer" else ""
    return None


class Access:
    """One server's rules: its operator keys and, with BUYER_AUTH=jwt, its buyer tokens."""

    def __init__(self, operators: OperatorKeys, buyers: BuyerTokens | None) -> None:
        self.operators = operators
        self.buyers = buyers

    @property
    def open_admin(self) -> bool:
        return not self.operators

    async def authorize(self, scope: Scope, need: Need) -> Principal:
        """The principal `scope`'s request acts as, or the refusal (401, 403, 503)."""
        principal = await self._principal(scope, need)
        if isinstance(principal, Operator):
            structlog.contextvars.bind_contextvars(actor=principal.name)
            if (
                need is Need.OPERATOR
                and principal.role != "admin"
                and scope["method"] not in _READS
            ):
                raise Forbidden(f"The key '{principal.name}' is a viewer's: it cannot make changes")
        scope[_PRINCIPAL] = principal
        return principal

    async def _principal(self, scope: Scope, need: Need) -> Principal:
        credential = bearer_token(scope)
        operator = self.operators.find(credential) if credential else None
        if operator is not None:
            return Operator(operator.name, operator.role)
        if need is Need.OPERATOR:
            if self.open_admin:  # whatever was presented, as the seed's open admin side
                return OPEN_ADMIN
            raise Unauthorized()
        if self.buyers is not None:  # an order read, BUYER_AUTH=jwt
            if credential is None:
                raise Unauthenticated()
            return Buyer(await self.buyers.buyer_id(credential))
        if credential is not None and not self.open_admin:
            raise Unauthorized()  # a key that is not one of ours
        if need is Need.READ_ORDER:
            return Anonymous()
        if self.open_admin:
            return OPEN_ADMIN
        raise Unauthorized()


def access_of(scope: Scope) -> Access:
    from flashsale.deps import state_of  # deps imports this module (AppState holds an Access)

    return state_of(scope["app"]).access


async def _authorized(request: Request, need: Need) -> Principal:
    principal: Principal | None = request.scope.get(_PRINCIPAL)
    if principal is None:  # a route outside AccessRoute: the dependency checks it itself
        principal = await access_of(request.scope).authorize(request.scope, need)
    return principal


# The security schemes OpenAPI documents (they only read the header; the checks are above).
_operator_key = HTTPBearer(
    scheme_name="operatorKey",
    auto_error=False,
    description="An operator key (API_KEYS, or API_KEY): viewer keys read, admin keys also "
    "write. Needed whenever the server has keys (a server without keys is loopback-only).",
)
_buyer_token = HTTPBearer(
    scheme_name="buyerToken",
    bearerFormat="JWT",
    auto_error=False,
    description="With BUYER_AUTH=jwt: the buyer's access token from the shop's identity "
    "provider; the buyer is its `sub`.",
)
OperatorScheme = Annotated[HTTPAuthorizationCredentials | None, Depends(_operator_key)]
BuyerScheme = Annotated[HTTPAuthorizationCredentials | None, Depends(_buyer_token)]


async def _operator(request: Request, _: OperatorScheme) -> Principal:
    return await _authorized(request, Need.OPERATOR)


async def _order_reader(request: Request, _: BuyerScheme, __: OperatorScheme) -> Principal:
    return await _authorized(request, Need.READ_ORDER)


async def _order_lister(request: Request, _: BuyerScheme, __: OperatorScheme) -> Principal:
    return await _authorized(request, Need.LIST_ORDERS)


async def buyer_scheme(_: BuyerScheme) -> None:
    """Documents the buyer token on POST /orders (served by `orders/hot_path.py`)."""


_NEEDS: dict[Callable[..., Any], Need] = {
    _operator: Need.OPERATOR,
    _order_reader: Need.READ_ORDER,
    _order_lister: Need.LIST_ORDERS,
}
# For a route's (or a router's) `dependencies=[...]`; the others as parameters, to get the buyer.
OperatorOnly = Depends(_operator)
OrderReader = Annotated[Principal, Depends(_order_reader)]
OrderLister = Annotated[Principal, Depends(_order_lister)]


class AccessRoute(APIRoute):
    """A route whose need (its `_NEEDS` dependency) is checked before its body is read."""

    @property
    def need(self) -> Need | None:
        needs = {_NEEDS[d.call] for d in self.dependant.dependencies if d.call in _NEEDS}
        assert len(needs) <= 1, f"{self.path}: one access rule per route"
        return next(iter(needs), None)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        need = self.need
        if need is None:
            return handler

        async def authorized_first(request: Request) -> Response:
            await access_of(request.scope).authorize(request.scope, need)
            return await handler(request)

        return authorized_first
