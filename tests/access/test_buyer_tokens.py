"""BUYER_AUTH=jwt through live servers: the buyer is the verified token's `sub`.

The identity provider is a local JWKS server (`jwks_server.py`) that the tests rotate, stop and
start, and whose fetches they count. Servers are shared per module; each test makes its own
product (the tables are emptied before each test) and checks the database, not only the answers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest

from flashsale.access.buyers import MAX_TOKEN_BYTES, REFETCH_MIN_S
from flashsale.access.devtokens import DevSigner
from flashsale.bench.harness import LiveServer
from tests.access.jwks_server import JwksServer, serving
from tests.factories import make_product, stock_of
from tests.support import eventually, http_client, post_all_at_once, running_server

ISSUER = "https://id.example.test/"
AUDIENCE = "flashsale"
OPERATOR_KEY = "operator-key-for-the-buyer-token-tests-0123456789"
BUYER_A = "buyer-a"
BUYER_B = "buyer-b"
BELL_IN_SUB = "buyer\u0007a"  # a control character
INVALID_TOKEN = 'Bearer error="invalid_token"'
ROTATION_CACHE_S = 1

# The provider's keys on the main server. Its BUYER_JWT_ALGORITHMS leaves ES256 out, so the
# ES256 key, though published, signs tokens with an algorithm off the list.
PROVIDER_RS = DevSigner.generate("RS256")
PROVIDER_ED = DevSigner.generate("EdDSA")
PROVIDER_ES = DevSigner.generate("ES256")
MAIN_ALGORITHMS = "RS256,EdDSA"
OUTSIDER = DevSigner.generate("RS256")  # a key the provider never published


# --- tokens ---------------------------------------------------------------------------------


def token(
    signer: DevSigner,
    sub: str = BUYER_A,
    *,
    ttl_s: float = 600,
    now: float | None = None,
    **claims: Any,
) -> str:
    """A token as the provider issues it; a new `jti` each time, so never one the server has
    remembered."""
    claims.setdefault("jti", uuid.uuid4().hex)
    return signer.token(sub, issuer=ISSUER, audience=AUDIENCE, ttl_s=ttl_s, now=now, **claims)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def operator() -> dict[str, str]:
    return bearer(OPERATOR_KEY)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def claims(sub: str = BUYER_A) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600}


def alg_none() -> str:
    header = {"alg": "none", "typ": "JWT", "kid": PROVIDER_RS.kid}
    return f"{b64json(header)}.{b64json(claims())}."


def hs256_with_the_public_key() -> str:
    """The algorithm-confusion attack: HS256 with the provider's RSA public key (which anybody
    can read) as the HMAC secret. Made by hand: PyJWT refuses to use a PEM key as a secret."""
    header = {"alg": "HS256", "typ": "JWT", "kid": PROVIDER_RS.kid}
    signing_input = f"{b64json(header)}.{b64json(claims())}".encode()
    signature = hmac.new(PROVIDER_RS.public_pem(), signing_input, hashlib.sha256).digest()
    return f"{signing_input.decode()}.{b64url(signature)}"


def signed_by_an_outsider_with_the_providers_kid() -> str:
    return jwt.encode(claims(), OUTSIDER.key, algorithm="RS256", headers={"kid": PROVIDER_RS.kid})


def without_sub() -> str:
    payload = claims()
    del payload["sub"]
    return jwt.encode(payload, PROVIDER_RS.key, algorithm="RS256", headers={"kid": PROVIDER_RS.kid})


def oversized() -> str:
    value = token(PROVIDER_RS, padding="x" * 7000)
    assert MAX_TOKEN_BYTES < len(value) < 2 * MAX_TOKEN_BYTES
    return value


def junk_with_an_unknown_kid() -> str:
    header = {"alg": "RS256", "typ": "JWT", "kid": uuid.uuid4().hex}
    return f"{b64json(header)}.{b64json(claims())}.{b64url(os.urandom(256))}"


# Each case: the Authorization header (None: no header), made when the test runs.
# "unknown-kid" first: it is the one that makes the server refetch the keys, and the sooner it
# runs the less test_a_new_key_is_accepted_at_once has to wait.
REFUSED: dict[str, Callable[[], str | None]] = {
    "unknown-kid": lambda: f"Bearer {token(OUTSIDER)}",
    "missing": lambda: None,
    "basic": lambda: "Basic " + base64.b64encode(b"buyer-a:password").decode(),
    "basic-with-a-valid-token": lambda: f"Basic {token(PROVIDER_RS)}",
    "bearer-without-a-token": lambda: "Bearer",
    "malformed-abc": lambda: "Bearer abc",
    "malformed-a.b.c": lambda: "Bearer a.b.c",
    "expired": lambda: f"Bearer {token(PROVIDER_RS, now=time.time() - 600, ttl_s=60)}",
    "not-yet-valid": lambda: f"Bearer {token(PROVIDER_RS, nbf=int(time.time()) + 600)}",
    "wrong-issuer": lambda: (
        "Bearer "
        + PROVIDER_RS.token(BUYER_A, issuer="https://evil.example.test/", audience=AUDIENCE)
    ),
    "wrong-audience": lambda: (
        "Bearer " + PROVIDER_RS.token(BUYER_A, issuer=ISSUER, audience="another-service")
    ),
    "bad-signature": lambda: f"Bearer {signed_by_an_outsider_with_the_providers_kid()}",
    "alg-none": lambda: f"Bearer {alg_none()}",
    "hs256-with-the-rsa-public-key": lambda: f"Bearer {hs256_with_the_public_key()}",
    "algorithm-off-the-list": lambda: f"Bearer {token(PROVIDER_ES)}",
    "no-sub": lambda: f"Bearer {without_sub()}",
    "sub-200-characters": lambda: f"Bearer {token(PROVIDER_RS, 'b' * 200)}",
    "sub-with-a-control-character": lambda: f"Bearer {token(PROVIDER_RS, BELL_IN_SUB)}",
    "sub-empty": lambda: f"Bearer {token(PROVIDER_RS, '')}",
    "over-8-kib": lambda: f"Bearer {oversized()}",
}


# --- servers --------------------------------------------------------------------------------


def jwt_env(**extra: str) -> dict[str, str]:
    """A BUYER_AUTH=jwt server's settings; `extra` names the key source."""
    return {
        "BUYER_AUTH": "jwt",
        "BUYER_JWT_ISSUER": ISSUER,
        "BUYER_JWT_AUDIENCE": AUDIENCE,
        "API_KEY": OPERATOR_KEY,
        **extra,
    }


@pytest.fixture(scope="module")
def main_jwks() -> Iterator[JwksServer]:
    with serving(PROVIDER_RS, PROVIDER_ED, PROVIDER_ES) as provider:
        yield provider


@pytest.fixture(scope="module")
def jwt_server(database_url: str, logs_dir: Path, main_jwks: JwksServer) -> Iterator[LiveServer]:
    """The default cache time (300 s): the keys change only by a refetch a request causes."""
    env = jwt_env(BUYER_JWKS_URL=main_jwks.url, BUYER_JWT_ALGORITHMS=MAIN_ALGORITHMS)
    with running_server(database_url, logs_dir, **env) as live:
        yield live


@pytest.fixture
async def jwt_client(jwt_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(jwt_server.url) as http:
        yield http


@pytest.fixture(scope="module")
def rotating_jwks() -> Iterator[JwksServer]:
    with serving(DevSigner.generate("ES256")) as provider:
        yield provider


@pytest.fixture(scope="module")
def rotating_server(
    database_url: str, logs_dir: Path, rotating_jwks: JwksServer
) -> Iterator[LiveServer]:
    """Refreshes its keys every ROTATION_CACHE_S."""
    env = jwt_env(BUYER_JWKS_URL=rotating_jwks.url, BUYER_JWKS_CACHE_S=str(ROTATION_CACHE_S))
    with running_server(database_url, logs_dir, **env) as live:
        yield live


@pytest.fixture
async def rotating_client(rotating_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(rotating_server.url) as http:
        yield http


def order(product_id: int, **fields: Any) -> dict[str, Any]:
    return {"product_id": product_id, "quantity": 1, **fields}


async def orders_of(pool: asyncpg.Pool, product_id: int) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            "SELECT id, buyer_id, quantity FROM orders WHERE product_id = $1", product_id
        )
    )


def accepted(http: httpx.AsyncClient, signer: DevSigner) -> Callable[[], Awaitable[bool]]:
    """Whether the server accepts a new token of `signer` (read-only: GET /orders)."""

    async def condition() -> bool:
        response = await http.get("/orders", headers=bearer(token(signer)))
        assert response.status_code in (200, 401), response.text
        return response.status_code == 200

    return condition


# --- 1. the buyer is the token's sub ----------------------------------------------------------


async def test_a_crowd_from_one_sub_gets_exactly_the_limit(
    jwt_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=1000, max_per_buyer=2)
    # 40 different requests, each with its own token of the same sub and no buyer_id.
    requests = [
        (jwt_client, order(product["id"]), bearer(token(PROVIDER_RS, BUYER_A))) for _ in range(40)
    ]

    responses = await post_all_at_once(requests)

    statuses = Counter(response.status_code for response in responses)
    assert statuses == {201: 2, 409: 38}, [r.text for r in responses if r.status_code >= 500]
    refusals = {r.json()["error"]["code"] for r in responses if r.status_code == 409}
    assert refusals == {"PURCHASE_LIMIT_EXCEEDED"}
    assert {r.json()["buyer_id"] for r in responses if r.status_code == 201} == {BUYER_A}
    rows = await orders_of(pool, product["id"])
    assert [(row["buyer_id"], row["quantity"]) for row in rows] == [(BUYER_A, 1), (BUYER_A, 1)]
    assert await stock_of(pool, product["id"]) == 998


async def test_a_body_buyer_id_must_be_the_sub(
    jwt_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=10)

    same = await jwt_client.post(
        "/orders", json=order(product["id"], buyer_id=BUYER_A), headers=bearer(token(PROVIDER_RS))
    )
    other = await jwt_client.post(
        "/orders", json=order(product["id"], buyer_id=BUYER_B), headers=bearer(token(PROVIDER_RS))
    )

    assert same.status_code == 201, same.text
    assert same.json()["buyer_id"] == BUYER_A
    assert other.status_code == 403, other.text
    assert other.json()["error"]["code"] == "BUYER_MISMATCH"
    rows = await orders_of(pool, product["id"])
    assert [row["buyer_id"] for row in rows] == [BUYER_A]
    assert await stock_of(pool, product["id"]) == 9


# --- 2. refused tokens ------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(REFUSED))
async def test_a_refused_token_is_401(
    jwt_client: httpx.AsyncClient, pool: asyncpg.Pool, case: str
) -> None:
    product = await make_product(pool, stock=10)
    placed = await jwt_client.post(  # an order that exists: its read is refused, not a 404
        "/orders", json=order(product["id"]), headers=bearer(token(PROVIDER_RS))
    )
    assert placed.status_code == 201, placed.text
    authorization = REFUSED[case]()
    headers = {} if authorization is None else {"Authorization": authorization}

    responses = {
        "POST /orders": await jwt_client.post(
            "/orders", json=order(product["id"]), headers=headers
        ),
        "GET /orders": await jwt_client.get("/orders", headers=headers),
        "GET /orders/{id}": await jwt_client.get(f"/orders/{placed.json()['id']}", headers=headers),
    }

    # RFC 6750 3.1: no error code when no credentials were presented at all.
    expected = "Bearer" if authorization is None else INVALID_TOKEN
    for route, response in responses.items():
        assert response.status_code == 401, (route, response.text)
        assert response.json()["error"]["code"] == "UNAUTHENTICATED", route
        assert response.headers["www-authenticate"] == expected, route
    assert len(await orders_of(pool, product["id"])) == 1
    assert await stock_of(pool, product["id"]) == 9


async def test_the_same_tokens_unspoilt_are_accepted(jwt_client: httpx.AsyncClient) -> None:
    """The refused tokens are these, each spoilt in one way: the refusals are for that."""
    by_hand = jwt.encode(
        claims(), PROVIDER_RS.key, algorithm="RS256", headers={"kid": PROVIDER_RS.kid}
    )
    for value in (by_hand, token(PROVIDER_RS), token(PROVIDER_ED), token(PROVIDER_RS, "b" * 128)):
        response = await jwt_client.get("/orders", headers=bearer(value))
        assert response.status_code == 200, response.text


# --- 3. key rotation --------------------------------------------------------------------------


async def test_a_new_key_is_accepted_at_once(
    jwt_client: httpx.AsyncClient, main_jwks: JwksServer, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=10)
    added = DevSigner.generate("EdDSA")
    # An unknown kid makes the server refetch the keys, but at most once per REFETCH_MIN_S
    # (5 s) after its last fetch: that is what keeps junk tokens with random kids from making it
    # hammer the provider (test_junk_kids_cause_at_most_one_fetch_per_interval). Other tests
    # (the unknown-kid case) may have just caused a fetch, so wait out the rest of those 5 s
    # from the last fetch the provider served; a provider publishes a new key before it signs
    # with it, so in practice the first token of a new key comes later than that anyway.
    last_fetch = main_jwks.last_fetch
    assert last_fetch is not None  # at least the start-up fetch
    await asyncio.sleep(max(0.0, last_fetch + REFETCH_MIN_S + 0.25 - time.monotonic()))
    main_jwks.publish(PROVIDER_RS, PROVIDER_ED, PROVIDER_ES, added)
    try:
        fetches = main_jwks.fetches

        first = await jwt_client.post(
            "/orders", json=order(product["id"]), headers=bearer(token(added, BUYER_B))
        )
        second = await jwt_client.post(
            "/orders", json=order(product["id"]), headers=bearer(token(added, BUYER_B))
        )

        assert first.status_code == second.status_code == 201, first.text
        assert first.json()["buyer_id"] == BUYER_B
        assert main_jwks.fetches == fetches + 1  # one refetch, for the first token only
    finally:
        main_jwks.publish(PROVIDER_RS, PROVIDER_ED, PROVIDER_ES)
    assert [row["buyer_id"] for row in await orders_of(pool, product["id"])] == [BUYER_B] * 2


async def test_a_removed_key_is_refused_after_the_cache_time(
    rotating_client: httpx.AsyncClient, rotating_jwks: JwksServer, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=10)
    old, new = DevSigner.generate("ES256"), DevSigner.generate("EdDSA")
    rotating_jwks.publish(old)
    await eventually(accepted(rotating_client, old), "the old key is loaded", limit_s=15)
    remembered = token(old)
    placed = await rotating_client.post(
        "/orders", json=order(product["id"]), headers=bearer(remembered)
    )
    assert placed.status_code == 201, placed.text

    rotating_jwks.publish(new)  # the old key removed, a new one in its place

    async def refused() -> bool:
        response = await rotating_client.get("/orders", headers=bearer(remembered))
        assert response.status_code in (200, 401), response.text
        return response.status_code == 401

    # At the next refresh (every ROTATION_CACHE_S); the limit only turns a hang into a failure.
    await eventually(refused, "the token of the removed key is refused", limit_s=15)
    again = await rotating_client.post(
        "/orders", json=order(product["id"]), headers=bearer(remembered)
    )
    fresh_old = await rotating_client.post(
        "/orders", json=order(product["id"]), headers=bearer(token(old))
    )
    with_new = await rotating_client.post(
        "/orders", json=order(product["id"]), headers=bearer(token(new))
    )

    for response in (again, fresh_old):
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == INVALID_TOKEN
    assert with_new.status_code == 201, with_new.text
    assert len(await orders_of(pool, product["id"])) == 2


# --- 4. the provider down ---------------------------------------------------------------------


async def test_cached_keys_keep_working_while_the_provider_is_down(
    rotating_server: LiveServer,
    rotating_client: httpx.AsyncClient,
    rotating_jwks: JwksServer,
    pool: asyncpg.Pool,
) -> None:
    product = await make_product(pool, stock=10)
    signer = DevSigner.generate("ES256")
    rotating_jwks.publish(signer)
    await eventually(accepted(rotating_client, signer), "the key is loaded", limit_s=15)
    failed_refreshes = rotating_server.log().count("buyer_keys.unavailable")

    rotating_jwks.stop()
    try:

        async def a_refresh_failed() -> bool:
            return rotating_server.log().count("buyer_keys.unavailable") > failed_refreshes

        await eventually(a_refresh_failed, "a refresh found the provider down", limit_s=15)
        placed = await rotating_client.post(
            "/orders", json=order(product["id"]), headers=bearer(token(signer))
        )
        junk = await rotating_client.post(
            "/orders", json=order(product["id"]), headers=bearer(junk_with_an_unknown_kid())
        )
    finally:
        rotating_jwks.start()

    assert placed.status_code == 201, placed.text
    assert junk.status_code == 401, junk.text  # keys are loaded: unknown, not unavailable
    assert len(await orders_of(pool, product["id"])) == 1


async def test_a_server_started_while_the_provider_is_down(
    database_url: str, logs_dir: Path, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=10)
    signer = DevSigner.generate("ES256")
    with serving(signer, started=False) as provider:
        env = jwt_env(BUYER_JWKS_URL=provider.url)
        with running_server(database_url, logs_dir, **env) as cold:
            async with http_client(cold.url) as http:
                refused = await http.post(
                    "/orders", json=order(product["id"]), headers=bearer(token(signer))
                )
                listing = await http.get("/orders", headers=bearer(token(signer)))

                for response in (refused, listing):
                    assert response.status_code == 503, response.text
                    assert response.json()["error"]["code"] == "AUTH_UNAVAILABLE"
                    assert int(response.headers["retry-after"]) >= 1
                assert await orders_of(pool, product["id"]) == []

                provider.start()

                async def placed() -> bool:
                    response = await http.post(
                        "/orders", json=order(product["id"]), headers=bearer(token(signer))
                    )
                    assert response.status_code in (201, 503), response.text
                    return response.status_code == 201

                # The server retries every REFETCH_MIN_S while it has no keys.
                await eventually(placed, "an order once the provider is back", limit_s=20)

    assert [row["buyer_id"] for row in await orders_of(pool, product["id"])] == [BUYER_A]


async def test_junk_kids_cause_at_most_one_fetch_per_interval(
    jwt_client: httpx.AsyncClient, main_jwks: JwksServer, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=10)
    started = time.monotonic()

    responses: list[httpx.Response] = []
    for _ in range(10):  # 200 requests over about 2 s, each with a random unknown kid
        wave = [
            jwt_client.post(
                "/orders", json=order(product["id"]), headers=bearer(junk_with_an_unknown_kid())
            )
            for _ in range(20)
        ]
        responses += await asyncio.gather(*wave)
        await asyncio.sleep(0.2)
    elapsed = time.monotonic() - started

    assert Counter(r.status_code for r in responses) == {401: 200}
    fetches = main_jwks.fetches_since(started)
    assert fetches <= 1 + int(elapsed // REFETCH_MIN_S), (fetches, elapsed)
    assert fetches <= 2
    assert await orders_of(pool, product["id"]) == []


# --- 5. reads ---------------------------------------------------------------------------------


async def test_buyers_read_only_their_own_orders(
    jwt_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=10)
    other_product = await make_product(pool, stock=10)
    a_token, b_token = token(PROVIDER_RS, BUYER_A), token(PROVIDER_ED, BUYER_B)
    placed_a = await jwt_client.post("/orders", json=order(product["id"]), headers=bearer(a_token))
    placed_b = await jwt_client.post("/orders", json=order(product["id"]), headers=bearer(b_token))
    placed_b2 = await jwt_client.post(
        "/orders", json=order(other_product["id"]), headers=bearer(b_token)
    )
    assert {placed_a.status_code, placed_b.status_code, placed_b2.status_code} == {201}
    a_id, b_id, b2_id = (p.json()["id"] for p in (placed_a, placed_b, placed_b2))

    async def ids(path: str, headers: dict[str, str], **params: Any) -> list[str]:
        response = await jwt_client.get(path, headers=headers, params=params)
        assert response.status_code == 200, response.text
        return sorted(o["id"] for o in response.json()["orders"])

    as_b = await jwt_client.get(f"/orders/{a_id}", headers=bearer(b_token))
    assert as_b.status_code == 404
    assert as_b.json()["error"]["code"] == "ORDER_NOT_FOUND"
    as_a = await jwt_client.get(f"/orders/{a_id}", headers=bearer(a_token))
    assert as_a.status_code == 200
    assert as_a.json()["buyer_id"] == BUYER_A
    assert await ids("/orders", bearer(b_token)) == sorted([b_id, b2_id])
    assert await ids("/orders", bearer(b_token), buyer_id=BUYER_A) == []
    assert await ids("/orders", bearer(b_token), product_id=product["id"]) == [b_id]
    assert await ids("/orders", bearer(a_token)) == [a_id]

    for order_id in (a_id, b_id):
        as_operator = await jwt_client.get(f"/orders/{order_id}", headers=operator())
        assert as_operator.status_code == 200
    assert await ids("/orders", operator()) == sorted([a_id, b_id, b2_id])
    assert await ids("/orders", operator(), buyer_id=BUYER_A) == [a_id]
    assert await ids("/orders", operator(), product_id=product["id"]) == sorted([a_id, b_id])

    for path in (f"/orders/{a_id}", "/orders"):
        anonymous = await jwt_client.get(path)
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "UNAUTHENTICATED"


# --- 6. idempotency keys are the buyer's -----------------------------------------------------


@dataclass(frozen=True)
class Shop:
    """POST /orders as a buyer: by token (jwt) or by the body's buyer_id (none)."""

    http: httpx.AsyncClient
    jwt: bool

    async def order(
        self, buyer: str, product_id: int, quantity: int = 1, key: str = "cart-1002"
    ) -> httpx.Response:
        body: dict[str, Any] = {"product_id": product_id, "quantity": quantity}
        headers = {"Idempotency-Key": key}
        if self.jwt:
            headers.update(bearer(token(PROVIDER_RS, buyer)))  # a new token every time
        else:
            body["buyer_id"] = buyer
        return await self.http.post("/orders", json=body, headers=headers)


@pytest.fixture(params=["jwt", "none"])
def shop(request: pytest.FixtureRequest) -> Shop:
    if request.param == "jwt":
        return Shop(request.getfixturevalue("jwt_client"), jwt=True)
    return Shop(request.getfixturevalue("client"), jwt=False)  # the session's none-mode server


async def test_an_idempotency_key_is_the_buyers_own(shop: Shop, pool: asyncpg.Pool) -> None:
    product = await make_product(pool, stock=100)

    first_a = await shop.order(BUYER_A, product["id"])
    first_b = await shop.order(BUYER_B, product["id"])
    again_a = await shop.order(BUYER_A, product["id"])
    changed_b = await shop.order(BUYER_B, product["id"], quantity=2)
    changed_c = await shop.order("buyer-c", product["id"], quantity=2)

    assert first_a.status_code == first_b.status_code == 201, (first_a.text, first_b.text)
    assert first_a.json()["id"] != first_b.json()["id"]
    assert (first_a.json()["buyer_id"], first_b.json()["buyer_id"]) == (BUYER_A, BUYER_B)
    assert "idempotent-replayed" not in first_a.headers
    assert "idempotent-replayed" not in first_b.headers
    assert again_a.status_code == 201
    assert again_a.json() == first_a.json()
    assert again_a.headers["idempotent-replayed"] == "true"
    # B's different body conflicts with B's own first request only: C's is a new order.
    assert changed_b.status_code == 422, changed_b.text
    assert changed_b.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert changed_c.status_code == 201, changed_c.text
    assert "idempotent-replayed" not in changed_c.headers
    rows = await orders_of(pool, product["id"])
    assert sorted((row["buyer_id"], row["quantity"]) for row in rows) == [
        (BUYER_A, 1),
        (BUYER_B, 1),
        ("buyer-c", 2),
    ]
    assert await stock_of(pool, product["id"]) == 96


async def test_a_body_buyer_id_equal_to_the_sub_replays_the_same_request(
    jwt_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=10)
    headers = {"Idempotency-Key": "cart-1003"}

    first = await jwt_client.post(
        "/orders", json=order(product["id"]), headers={**headers, **bearer(token(PROVIDER_RS))}
    )
    named = await jwt_client.post(
        "/orders",
        json=order(product["id"], buyer_id=BUYER_A),
        headers={**headers, **bearer(token(PROVIDER_ED))},
    )

    assert first.status_code == named.status_code == 201
    assert named.json() == first.json()
    assert named.headers["idempotent-replayed"] == "true"
    assert len(await orders_of(pool, product["id"])) == 1


# --- 7. a PEM public key file ------------------------------------------------------------------

PEM_SIGNER = DevSigner.generate("EdDSA")


@pytest.fixture(scope="module")
def pem_server(
    database_url: str, logs_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    key_file = tmp_path_factory.mktemp("buyer-key") / "provider-public.pem"
    key_file.write_bytes(PEM_SIGNER.public_pem())
    env = jwt_env(BUYER_JWT_PUBLIC_KEY_FILE=str(key_file))
    with running_server(database_url, logs_dir, **env) as live:
        yield live


async def test_a_pem_key_file_verifies_tokens_without_a_kid(
    pem_server: LiveServer, pool: asyncpg.Pool
) -> None:
    product = await make_product(pool, stock=10)
    signed = jwt.encode(claims(BUYER_A), PEM_SIGNER.key, algorithm="EdDSA")
    forged = jwt.encode(claims(BUYER_B), DevSigner.generate("EdDSA").key, algorithm="EdDSA")
    assert "kid" not in jwt.get_unverified_header(signed)

    async with http_client(pem_server.url) as http:
        placed = await http.post("/orders", json=order(product["id"]), headers=bearer(signed))
        refused = await http.post("/orders", json=order(product["id"]), headers=bearer(forged))

    assert placed.status_code == 201, placed.text
    assert placed.json()["buyer_id"] == BUYER_A
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"]["code"] == "UNAUTHENTICATED"
    assert refused.headers["www-authenticate"] == INVALID_TOKEN
    assert [row["buyer_id"] for row in await orders_of(pool, product["id"])] == [BUYER_A]
