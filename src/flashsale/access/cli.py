"""`flashsale keys new` (operator keys) and `flashsale dev keys|token` (buyer tokens for trying
BUYER_AUTH=jwt locally). Imports what a command needs when it runs, like the rest of the CLI."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def keys() -> None:
    """Operator keys (API_KEYS)."""


@keys.command("new")
@click.option("--name", required=True, help="Who holds it: logged as the actor of its requests")
@click.option(
    "--role",
    type=click.Choice(["admin", "viewer"]),
    default="viewer",
    show_default=True,
    help="viewer: every admin read; admin: also every write",
)
def new_key(name: str, role: str) -> None:
    """Make a random key; print the secret (shown only now) and its API_KEYS entry."""
    from flashsale.access.operators import new_key as make

    try:
        secret, key = make(name, "admin" if role == "admin" else "viewer")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--name") from None
    click.echo(f"secret (give it to {name}; it is not stored anywhere): {secret}")
    click.echo(f"API_KEYS entry (comma-separate several): {key.line}")


@click.group()
def dev() -> None:
    """Buyer tokens for development and tests ONLY (production tokens come from the shop's
    identity provider, which holds the private key)."""


@dev.command("keys")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--algorithm",
    type=click.Choice(["ES256", "RS256", "EdDSA"]),
    default="ES256",
    show_default=True,
)
def dev_keys(directory: Path, algorithm: str) -> None:
    """Write a signing key pair into DIRECTORY and print the settings that trust it."""
    from flashsale.access import devtokens

    private, public = devtokens.write_key_pair(directory, algorithm)  # type: ignore[arg-type]
    click.echo(f"# private key (signs tokens; development only): {private}")
    click.echo("BUYER_AUTH=jwt")
    click.echo(f"BUYER_JWT_PUBLIC_KEY_FILE={public.resolve()}")
    click.echo(f"BUYER_JWT_ISSUER={devtokens.DEV_ISSUER}")
    click.echo(f"BUYER_JWT_AUDIENCE={devtokens.DEV_AUDIENCE}")


@dev.command("token")
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The private key `flashsale dev keys` wrote",
)
@click.option("--sub", required=True, help="The buyer (the token's subject)")
@click.option("--ttl", default=3600, show_default=True, type=click.IntRange(1, 86400 * 30))
@click.option("--issuer", default="flashsale-dev", show_default=True)
@click.option("--audience", default="flashsale", show_default=True)
def dev_token(key_file: Path, sub: str, ttl: int, issuer: str, audience: str) -> None:
    """Print a buyer access token signed with KEY (development only)."""
    from flashsale.access.devtokens import DevSigner

    try:
        signer = DevSigner.from_pem(key_file.read_bytes())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--key") from None
    click.echo(signer.token(sub, issuer=issuer, audience=audience, ttl_s=ttl))
