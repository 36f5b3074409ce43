"""`exchange keys`: the signing-key lifecycle for operators (docs/OPERATIONS.md, "Signing keys").

Every command that writes keys first proves that the KEK it was given decrypts the current key, inside
the same locked transaction as its change, and otherwise refuses in one sentence with nothing changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from exchange.cli.console import config_option, fail, json_option, run, settings_or_exit
from exchange.cli.output import emit_lines, emit_object, note, table, utc, utc_seconds
from schemas.config import Settings
from schemas.output import KeyLine, RevokedKey, RewrappedKeys, RotatedKey
from schemas.records import StoredKey

yes_option = click.option("--yes", is_flag=True, help="Do it: this cannot be undone.")


@click.group()
def keys() -> None:
    """Signing keys: next (published) -> current (signs) -> previous (published) -> retired."""


async def _keyring(settings: Settings) -> Any:
    from exchange.keys import KeyRing, load_kek
    from exchange.lifecycle import Timing
    from exchange.store import open_store

    kek = load_kek(settings.signing, settings.store)
    store = await open_store(settings.store)
    return store, KeyRing(store, kek, settings.signing.algorithm, timing=Timing.of(settings))


def _change(settings: Settings, plan: Callable[[Any, list[StoredKey], float], Sequence[Any]]) -> Any:
    """Run one key-writing plan (given the ring, the stored keys and now); the changes and keys after."""
    from exchange.lifecycle import LifecycleError
    from exchange.store.base import KeyConflict

    async def go() -> tuple[list[Any], list[StoredKey]]:
        store, ring = await _keyring(settings)
        try:
            now = time.time()
            changes = await ring.change(lambda keys: plan(ring, keys, now))
            return changes, await store.list_keys()
        finally:
            await store.close()

    try:
        return run(go)
    except (LifecycleError, KeyConflict) as exc:
        fail(str(exc))


def _timing(settings: Settings) -> Any:
    from exchange.lifecycle import Timing

    return Timing.of(settings)


@keys.command("list")
@config_option
@json_option
def keys_list(config_file: str | None, as_json: bool) -> None:
    """List signing keys, their state, and when each signs, stopped signing and retires (UTC)."""
    from exchange.lifecycle import activates_at, retires_at

    settings = settings_or_exit(config_file)
    t = _timing(settings)

    async def go() -> list[StoredKey]:
        from exchange.store import open_store

        store = await open_store(settings.store)
        try:
            return await store.list_keys()
        finally:
            await store.close()

    rows = run(go)
    if as_json:
        emit_lines(
            KeyLine(
                kid=k.kid,
                alg=k.alg,
                state=k.state,
                created_at=utc(k.created_at) or "",
                activated_at=utc(activates_at(k, t)),
                deactivated_at=utc(k.deactivated_at),
                retired_at=utc(retires_at(k, t)),
                revoked=k.revoked,
                kek_id=k.kek_id,
            )
            for k in rows
        )
        return
    table(
        ["KID", "ALG", "STATE", "PUBLISHED", "SIGNS FROM", "STOPPED SIGNING", "RETIRES", "KEK", "NOTE"],
        (
            [
                k.kid,
                k.alg,
                k.state,
                utc_seconds(k.created_at),
                utc_seconds(activates_at(k, t)),
                utc_seconds(k.deactivated_at),
                utc_seconds(retires_at(k, t)),
                k.kek_id,
                "revoked" if k.revoked else None,
            ]
            for k in rows
        ),
        widths=[None] * 9,
    )


@keys.command("rotate")
@click.option("--now", "at_once", is_flag=True, help="Emergency: a key signs at once (needs --yes).")
@click.option(
    "--kek-lost",
    is_flag=True,
    help="With --now --yes: the KEK is lost; revoke every key and sign with a new one under the KEK given.",
)
@yes_option
@config_option
@json_option
def keys_rotate(config_file: str | None, at_once: bool, kek_lost: bool, yes: bool, as_json: bool) -> None:
    """Stage a new key: published now, signing once every verifier's cached JWKS has it (JWKS max-age
    plus margin); the current key signs until then. With --now --yes a key signs at once."""
    from exchange import lifecycle

    settings = settings_or_exit(config_file)
    t = _timing(settings)
    cost = (
        f"verifiers whose cached JWKS predates the new key refuse its tokens until their cache expires "
        f"(up to {t.cache_lifetime:.0f} s, the JWKS max-age) or they fetch it again"
    )
    if kek_lost and not (at_once and yes):
        fail("--kek-lost revokes every key (each token they signed fails); give it with --now --yes")
    if at_once and not yes:
        fail(f"rotate --now makes a key sign at once: {cost}; add --yes to do it")
    if kek_lost:
        _replace_all(settings, as_json, cost)
        return

    def plan(ring: Any, keys: list[StoredKey], now: float) -> Sequence[Any]:
        if at_once:
            return lifecycle.rotate_now(keys, now, ring.new_key(now))
        return lifecycle.stage(keys, now, ring.new_key(now))

    changes, after = _change(settings, plan)
    current, staged = lifecycle.current_of(after), lifecycle.next_of(after)
    key = current if at_once or staged is None else staged
    if key is None:
        fail("no key is current or staged after the rotation")
    if at_once:  # the cost goes to stderr whatever stdout carries
        note(f"warning: key {key.kid} signs from now: {cost}")
    if as_json:
        emit_object(
            RotatedKey(
                kid=key.kid,
                state=key.state,
                activated_at=utc(lifecycle.activates_at(key, t)),
                changed=bool(changes),
            )
        )
    elif at_once:
        click.echo(f"rotated now: key {key.kid} is current")
    elif not changes:
        click.echo(
            f"already staged: key {key.kid} becomes current at "
            f"{utc_seconds(lifecycle.activates_at(key, t))}; nothing changed"
        )
    elif key.state == "current":
        click.echo(f"created: key {key.kid} is current (there was no current key)")
    else:
        signing = current.kid if current is not None else "-"
        click.echo(
            f"staged: key {key.kid} ({key.alg}) is published now and becomes current at "
            f"{utc_seconds(lifecycle.activates_at(key, t))} (JWKS max-age {t.cache_lifetime:.0f} s + "
            f"margin {t.margin:.0f} s); key {signing} signs until then"
        )


def _replace_all(settings: Settings, as_json: bool, cost: str) -> None:
    """The one key-writing step that cannot prove the KEK: the KEK it would prove is the one lost."""
    from exchange import lifecycle

    async def go() -> tuple[list[Any], list[StoredKey]]:
        store, ring = await _keyring(settings)
        try:
            now = time.time()
            changes = await ring.change(
                lambda keys: lifecycle.replace_all(keys, now, ring.new_key(now)), kek_lost=True
            )
            return changes, await store.list_keys()
        finally:
            await store.close()

    changes, after = run(go)
    current = lifecycle.current_of(after)
    assert current is not None
    revoked = [c.kid for c in changes if getattr(c, "revoked", False)]
    note(
        f"WARNING: revoked {len(revoked)} keys sealed under the lost KEK ({', '.join(revoked) or 'none'}): "
        f"every token they signed now fails; key {current.kid} signs from now: {cost}"
    )
    if as_json:
        emit_object(
            RotatedKey(
                kid=current.kid, state=current.state, activated_at=utc(current.activated_at), changed=True
            )
        )
        return
    click.echo(f"rotated now: key {current.kid} is current")


@keys.command("revoke")
@click.argument("kid")
@yes_option
@config_option
@json_option
def keys_revoke(kid: str, yes: bool, config_file: str | None, as_json: bool) -> None:
    """Emergency: unpublish KID at once, destroy its private half, and never sign with it again (the
    staged key, or a new one, signs instead). Tokens it signed fail wherever the JWKS is refreshed."""
    from exchange import lifecycle

    settings = settings_or_exit(config_file)
    t = _timing(settings)
    if not yes:
        fail(
            f"revoking {kid} unpublishes it at once and destroys it: every token it signed fails at each "
            "verifier as soon as it refreshes the JWKS; add --yes to do it"
        )

    def plan(ring: Any, keys: list[StoredKey], now: float) -> Sequence[Any]:
        return lifecycle.revoke(keys, kid, now, ring.new_key(now))

    changes, after = _change(settings, plan)
    current = lifecycle.current_of(after)
    was_current = bool(changes) and changes[0].from_state == "current"
    replaced = current.kid if was_current and current is not None else None
    if changes:  # the warnings go to stderr whatever stdout carries
        _revoke_warnings(kid, replaced, t.cache_lifetime)
    if as_json:
        emit_object(RevokedKey(kid=kid, replaced_by=replaced, changed=bool(changes)))
    elif not changes:
        click.echo(f"already retired: key {kid}; nothing changed")
    elif replaced is not None:
        click.echo(f"revoked: key {kid}; key {replaced} signs instead")
    else:
        click.echo(f"revoked: key {kid} (it was not signing)")


def _revoke_warnings(kid: str, replaced: str | None, cache_lifetime: float) -> None:
    note(
        f"WARNING: key {kid} is revoked: it is no longer published and its private half is destroyed; "
        "every token it signed now fails at the exchange, and at each verifier once its cached JWKS "
        f"expires (within {cache_lifetime:.0f} s)"
    )
    if replaced is not None:
        note(
            f"warning: key {replaced} signs from now: verifiers whose cached JWKS predates it refuse its "
            f"tokens until their cache expires (up to {cache_lifetime:.0f} s) or they fetch it again"
        )


@keys.command("rewrap")
@yes_option
@config_option
@json_option
def keys_rewrap(yes: bool, config_file: str | None, as_json: bool) -> None:
    """Reseal every key under the KEK in use (EXCHANGE_KEK or signing.kek_file), opening each with the
    previous KEK (EXCHANGE_KEK_PREVIOUS or signing.previous_kek_file) that sealed it. Afterwards the
    previous KEK opens nothing; replicas holding both keep signing throughout."""
    from exchange import lifecycle

    settings = settings_or_exit(config_file)
    if not yes:
        fail(
            "rewrap reseals every key under the KEK in use, after which the previous KEK opens none; "
            "add --yes"
        )

    def plan(ring: Any, keys: list[StoredKey], now: float) -> Sequence[Any]:
        return lifecycle.rewrap(keys, ring.kek_id, ring.reseal)

    changes, _ = _change(settings, plan)
    kek_id = changes[0].kek_id if changes else _kek_id(settings)
    if as_json:
        emit_object(RewrappedKeys(kek_id=kek_id, rewrapped=len(changes)))
        return
    if not changes:
        click.echo(f"nothing to rewrap: every key is sealed under KEK {kek_id}")
        return
    click.echo(
        f"rewrapped {len(changes)} keys under KEK {kek_id}; the previous KEK opens none of them now: "
        "remove it (EXCHANGE_KEK_PREVIOUS or signing.previous_kek_file) from every replica"
    )


def _kek_id(settings: Settings) -> str:
    from exchange.keys import load_kek

    return str(load_kek(settings.signing, settings.store).kek_id)


@keys.command("export-jwks")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write here instead of stdout.")
@config_option
@json_option
def keys_export_jwks(out: str | None, config_file: str | None, as_json: bool) -> None:
    """The public keys the service publishes (next, current, previous) as a JWKS, for air-gapped
    verifiers; needs no KEK. Export again after each rotation. (The JWKS is JSON already: one object,
    with or without --json.)"""
    from exchange.keys import jwks_of

    settings = settings_or_exit(config_file)

    async def go() -> bytes:
        from exchange.store import open_store

        store = await open_store(settings.store)
        try:
            return jwks_of(await store.list_keys())
        finally:
            await store.close()

    document = run(go)
    if out is None:
        click.echo(document.decode())
        return
    try:
        Path(out).write_bytes(document + b"\n")
    except OSError as exc:
        fail(f"--out: cannot write {out} ({exc.strerror})")
    note(f"wrote {out}")


@keys.command("import")
@click.option(
    "--pem", "pem_file", required=True, type=click.Path(dir_okay=False), help="A private key, PEM, mode 0600."
)
@config_option
@json_option
def keys_import(pem_file: str, config_file: str | None, as_json: bool) -> None:
    """Bring your own key: an unencrypted PEM private key (EC P-256, Ed25519, RSA 2048-8192) that fits
    signing.algorithm, staged as the next key (published now, current after the usual wait)."""
    from exchange import lifecycle
    from exchange.keys import load_pem

    settings = settings_or_exit(config_file)
    t = _timing(settings)
    key = run_sync(lambda: load_pem(Path(pem_file), settings.signing.algorithm))

    def plan(ring: Any, keys: list[StoredKey], now: float) -> Sequence[Any]:
        return lifecycle.stage_imported(keys, now, ring.seal(key, settings.signing.algorithm, now))

    _, after = _change(settings, plan)
    staged = next(k for k in after if k.kid == key.thumbprint())
    when = lifecycle.activates_at(staged, t)
    if as_json:
        emit_object(RotatedKey(kid=staged.kid, state=staged.state, activated_at=utc(when), changed=True))
        return
    click.echo(
        f"imported: key {staged.kid} ({staged.alg}) is {staged.state}; it signs from {utc_seconds(when)}"
    )


def run_sync(fn: Callable[[], Any]) -> Any:
    from exchange.errors import ConfigError

    try:
        return fn()
    except ConfigError as exc:
        fail(*exc.problems)
