"""Verified buyers (BUYER_AUTH=jwt): flashsale as a resource server of the shop's identity provider.

A buyer's access token is a JWT signed by the provider. It is accepted when its algorithm is on
BUYER_JWT_ALGORITHMS (public-key algorithms only), its `kid` names one of the provider's keys,
the signature verifies, `iss` and `aud` are the configured ones, `exp` has not passed and `nbf`
has (BUYER_JWT_LEEWAY_S of clock skew either way), and `sub` is a valid buyer id. PyJWT (with
`cryptography`) does the cryptography and the claim checks.

The keys (`BuyerKeys`) come from BUYER_JWKS_URL, fetched with httpx without blocking the event
loop, or from BUYER_JWT_PUBLIC_KEY_FILE (a JWKS or a PEM public key). They are refreshed every
BUYER_JWKS_CACHE_S in the background, and at once when a token names an unknown `kid`, at most
once per `REFETCH_MIN_S` (junk tokens cannot make us hammer the provider). While the provider
is down the keys we have keep working; with none at all, orders get 503 AUTH_UNAVAILABLE.

A verified token is remembered until it expires (`_verified`, by its SHA-256, at most
MAX_REMEMBERED_TOKENS: then forgotten all at once), so a buyer's next orders cost a hash and a
dictionary lookup; the memory is dropped whenever the key set changes.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import structlog
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.utils import base64url_decode
from pydantic import TypeAdapter, ValidationError

from flashsale import background
from flashsale.errors import AppError
from flashsale.orders.schemas import BuyerId

if TYPE_CHECKING:
    from flashsale.config import Settings

log = structlog.get_logger()

MAX_TOKEN_BYTES = 8192
REFETCH_MIN_S = 5.0  # the least time between two fetches a request can cause
FETCH_TIMEOUT_S = 5.0
MAX_REMEMBERED_TOKENS = 100_000
_BUYER_ID = TypeAdapter(BuyerId)


class Unauthenticated(AppError):
    """No usable buyer token (RFC 6750: `invalid_token` when one was presented)."""

    status_code = 401
    code = "UNAUTHENTICATED"
    message = "A valid buyer access token is required: 'Authorization: Bearer <token>'"
    refusal = "unauthenticated"

    @classmethod
    def invalid(cls, reason: str) -> Unauthenticated:
        return cls(
            f"The buyer token is not accepted: {reason}",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )


class AuthUnavailable(AppError):
    status_code = 503
    code = "AUTH_UNAVAILABLE"
    message = "The identity provider's keys cannot be loaded, so no token can be verified; retry"
    refusal = "auth_unavailable"

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": str(int(REFETCH_MIN_S))})


class KeySourceError(Exception):
    """The keys could not be read: the provider is unreachable or answered nonsense."""


def public_jwk(key: object) -> dict[str, Any]:
    """An RSA, EC or Ed25519 public key as a JWK (without `kid`, `alg` or `use`)."""
    if isinstance(key, rsa.RSAPublicKey):
        return RSAAlgorithm.to_jwk(key, as_dict=True)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ECAlgorithm.to_jwk(key, as_dict=True)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return OKPAlgorithm.to_jwk(key, as_dict=True)
    raise ValueError("not an RSA, EC or Ed25519 public key")


def jwks_from_pem(pem: bytes) -> dict[str, Any]:
    """A PEM public key as a one-key JWKS (no `kid`: it verifies tokens without one)."""
    return {"keys": [public_jwk(load_pem_public_key(pem))]}


def parse_key_file(content: bytes) -> Any:
    """BUYER_JWT_PUBLIC_KEY_FILE's content (a PEM public key or a JWKS) as a JWKS."""
    if content.lstrip().startswith(b"-----BEGIN"):
        return jwks_from_pem(content)
    try:
        return json.loads(content)
    except ValueError as exc:
        raise ValueError("neither a PEM public key nor a JWKS (JSON)") from exc


def _signing_keys(document: Any) -> dict[str | None, dict[str, Any]]:
    """A JWKS's public signature keys by `kid`. Symmetric (`oct`) keys and keys for encryption
    are left out: a token is never verified with a secret anybody could read from a JWKS."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeySourceError("not a JWKS: no 'keys' list")
    keys: dict[str | None, dict[str, Any]] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or jwk.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        kid = jwk.get("kid")
        if kid is None or isinstance(kid, str):
            keys[kid] = jwk
    if not keys:
        raise KeySourceError("the JWKS has no public signature key")
    return keys


class BuyerKeys:
    """The identity provider's public keys, by `kid`, kept current."""

    def __init__(self, settings: Settings, *, refetch_min_s: float = REFETCH_MIN_S) -> None:
        self._url = settings.buyer_jwks_url
        self._file = settings.buyer_jwt_public_key_file
        self._cache_s = settings.buyer_jwks_cache_s
        self._refetch_min_s = refetch_min_s
        self._keys: dict[str | None, dict[str, Any]] = {}
        self._verifiers: dict[tuple[str | None, str], jwt.PyJWK] = {}
        self._loaded = False
        self._last_attempt = -float("inf")
        self._fetch: asyncio.Task[bool] | None = None  # the read in flight, shared
        self._http: httpx.AsyncClient | None = None
        self.version = 0  # changes whenever the set does

    @contextlib.asynccontextmanager
    async def kept_current(self) -> AsyncIterator[None]:
        """Fetch the keys (a failure is logged, not fatal) and refresh them in the background
        for the block."""
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=False) as http:
            self._http = http
            await self.refresh()
            try:
                async with background.running(self._refresh_periodically()):
                    yield
            finally:
                if self._fetch is not None:
                    self._fetch.cancel()
                self._http = None

    async def _refresh_periodically(self) -> None:
        while True:
            # After a failure, try again soon rather than a whole cache period later.
            await asyncio.sleep(self._cache_s if self._loaded else self._refetch_min_s)
            await self.refresh()

    async def refresh(self) -> bool:
        """Read the key set now, False when it could not be read. Callers during a read share
        it (a slow provider never queues reads up); a caller cancelled does not cancel it."""
        if self._fetch is None or self._fetch.done():
            self._fetch = asyncio.create_task(self._read_keys(), name="buyer-keys-read")
        return await asyncio.shield(self._fetch)

    async def _read_keys(self) -> bool:
        self._last_attempt = time.monotonic()
        try:
            async with asyncio.timeout(FETCH_TIMEOUT_S):  # the whole read, however it trickles
                keys = _signing_keys(await self._read())
        except (KeySourceError, ValueError, OSError, httpx.HTTPError, TimeoutError) as exc:
            log.warning("buyer_keys.unavailable", error=repr(exc), keys_kept=len(self._keys))
            return False
        if keys != self._keys:
            self._keys, self._verifiers = keys, {}
            self.version += 1
            log.info("buyer_keys.loaded", kids=sorted(str(kid) for kid in keys))
        self._loaded = True
        return True

    async def _read(self) -> Any:
        if self._file is not None:
            content = await asyncio.to_thread(self._file.read_bytes)
            return parse_key_file(content)
        if self._http is None or self._url is None:
            raise KeySourceError("no JWKS URL, or read outside kept_current()")
        response = await self._http.get(self._url, headers={"Accept": "application/json"})
        if response.status_code != 200:
            raise KeySourceError(f"the JWKS URL answered {response.status_code}")
        try:
            return response.json()
        except ValueError as exc:
            raise KeySourceError("the JWKS URL answered something that is not JSON") from exc

    async def verifier(self, kid: str | None, algorithm: str) -> jwt.PyJWK | None:
        """The key that verifies a token with this `kid` and `alg`; None when there is none."""
        jwk = self._keys.get(kid)
        if jwk is None:
            await self._refetch()  # an unknown kid: perhaps a key the provider just added
            if not self._loaded:
                raise AuthUnavailable()
            jwk = self._keys.get(kid)
            if jwk is None:
                return None
        verifier = self._verifiers.get((kid, algorithm))
        if verifier is None:
            if jwk.get("alg", algorithm) != algorithm:
                return None
            try:
                verifier = jwt.PyJWK(jwk, algorithm)
            except jwt.PyJWTError:  # the key is not of this algorithm's type
                return None
            self._verifiers[(kid, algorithm)] = verifier
        return verifier

    async def _refetch(self) -> bool:
        """A read a request asked for: joins the one in flight, else at most one per
        REFETCH_MIN_S."""
        reading = self._fetch is not None and not self._fetch.done()
        if not reading and time.monotonic() - self._last_attempt < self._refetch_min_s:
            return False
        return await self.refresh()


class BuyerTokens:
    """Verifies buyer tokens; `buyer_id(token)` is the token's `sub`."""

    def __init__(self, settings: Settings, keys: BuyerKeys) -> None:
        assert settings.buyer_jwt_issuer
        assert settings.buyer_jwt_audience
        self.keys = keys
        self._algorithms = frozenset(settings.buyer_jwt_algorithms)
        self._issuer = settings.buyer_jwt_issuer
        self._audience = settings.buyer_jwt_audience
        self._leeway_s = settings.buyer_jwt_leeway_s
        # sha256(token) -> (sub, accepted until): 32 bytes a token, whatever its size
        self._verified: dict[bytes, tuple[str, float]] = {}
        self._verified_version = keys.version

    async def buyer_id(self, token: str) -> str:
        """The verified buyer; raises Unauthenticated (or AuthUnavailable)."""
        if self._verified_version != self.keys.version:
            self._verified.clear()
            self._verified_version = self.keys.version
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated.invalid(f"longer than {MAX_TOKEN_BYTES} bytes")
        fingerprint = hashlib.sha256(token.encode()).digest()
        remembered = self._verified.get(fingerprint)
        if remembered is not None and time.time() < remembered[1]:
            return remembered[0]
        sub, expires_at = await self._verify(token)
        if len(self._verified) >= MAX_REMEMBERED_TOKENS:
            self._verified.clear()
        self._verified[fingerprint] = (sub, expires_at + self._leeway_s)
        return sub

    async def _verify(self, token: str) -> tuple[str, float]:
        header = _key_hints(token)
        algorithm, kid = header.get("alg"), header.get("kid")
        if not isinstance(algorithm, str) or algorithm not in self._algorithms:
            raise Unauthenticated.invalid("its algorithm is not accepted")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated.invalid("malformed kid")
        key = await self.keys.verifier(kid, algorithm)
        if key is None:
            raise Unauthenticated.invalid("no key of the identity provider matches its kid")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated.invalid(str(exc)) from None
        try:
            sub = _BUYER_ID.validate_python(claims["sub"], strict=True)
        except ValidationError:
            raise Unauthenticated.invalid(
                "its sub is not a buyer id (1-128 printable characters)"
            ) from None
        return sub, float(claims["exp"])


def _key_hints(token: str) -> dict[str, Any]:
    """The token's header, read only to choose the key: `jwt.decode` then parses and checks the
    whole token itself. (PyJWT's `get_unverified_header` decodes all three segments, the
    signature too, character by character: a third of a new RS256 token's cost.)"""
    if token.count(".") != 2:
        raise Unauthenticated.invalid("malformed (not three segments)")
    try:
        header = json.loads(base64url_decode(token.partition(".")[0]))
    except (ValueError, binascii.Error, RecursionError):
        raise Unauthenticated.invalid("malformed header") from None
    if not isinstance(header, dict):
        raise Unauthenticated.invalid("malformed header")
    return header


def check_key_file(path: Path) -> None:
    """Check BUYER_JWT_PUBLIC_KEY_FILE at start-up; ValueError says what is wrong."""
    try:
        _signing_keys(parse_key_file(path.read_bytes()))
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc.strerror}") from None
    except KeySourceError as exc:
        raise ValueError(str(exc)) from None
