"""Buyer tokens for development, tests and benchmarks: a signing key pair and tokens made with it.

FOR DEVELOPMENT AND TESTS ONLY. In production the shop's identity provider holds the private key
and issues the tokens; flashsale only ever sees the public keys (BUYER_JWKS_URL).
`flashsale dev keys` and `flashsale dev token` are the command-line face of this module.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from flashsale.access.buyers import public_jwk

DevAlgorithm = Literal["ES256", "RS256", "EdDSA"]
DEV_ISSUER = "flashsale-dev"
DEV_AUDIENCE = "flashsale"
PRIVATE_KEY_FILE = "buyer-signing-key.pem"
JWKS_FILE = "buyer-jwks.json"

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True, slots=True)
class DevSigner:
    """A private key with its algorithm and `kid` (derived from the public key)."""

    key: SigningKey
    algorithm: DevAlgorithm

    @classmethod
    def generate(cls, algorithm: DevAlgorithm = "ES256") -> DevSigner:
        key: SigningKey
        if algorithm == "RS256":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif algorithm == "ES256":
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            key = ed25519.Ed25519PrivateKey.generate()
        return cls(key, algorithm)

    @classmethod
    def from_pem(cls, pem: bytes) -> DevSigner:
        key = serialization.load_pem_private_key(pem, password=None)
        if isinstance(key, rsa.RSAPrivateKey):
            return cls(key, "RS256")
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return cls(key, "ES256")
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return cls(key, "EdDSA")
        raise ValueError("not an RSA, EC P-256 or Ed25519 private key")

    @property
    def kid(self) -> str:
        public = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(public).hexdigest()[:16]

    def private_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwk(self) -> dict[str, Any]:
        jwk = public_jwk(self.key.public_key())
        return {**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def token(
        self,
        sub: str,
        *,
        issuer: str = DEV_ISSUER,
        audience: str = DEV_AUDIENCE,
        ttl_s: float = 3600,
        now: float | None = None,
        **claims: Any,
    ) -> str:
        issued = time.time() if now is None else now
        payload = {
            "sub": sub,
            "iss": issuer,
            "aud": audience,
            "iat": int(issued),
            "exp": int(issued + ttl_s),
            **claims,
        }
        return jwt.encode(payload, self.key, algorithm=self.algorithm, headers={"kid": self.kid})


def jwks(*signers: DevSigner) -> dict[str, Any]:
    return {"keys": [signer.jwk() for signer in signers]}


def write_key_pair(directory: Path, algorithm: DevAlgorithm = "ES256") -> tuple[Path, Path]:
    """A new private key (mode 0600) and its public JWKS in `directory`: (private, jwks)."""
    signer = DevSigner.generate(algorithm)
    directory.mkdir(parents=True, exist_ok=True)
    private = directory / PRIVATE_KEY_FILE
    private.touch(mode=0o600)
    private.chmod(0o600)  # also when it existed
    private.write_bytes(signer.private_pem())
    public = directory / JWKS_FILE
    public.write_text(json.dumps(jwks(signer), indent=2) + "\n")
    return private, public
