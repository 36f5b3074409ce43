"""`exchange verify` through click's CliRunner, against a JWKS file and a real local JWKS server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from joserfc.jwk import Key

from exchange.cli.verify import verify_command
from tests.verify.conftest import AUDIENCE, ISSUER, PURPOSE, JWKSServer, base_claims, mint, public_jwks


def live_token(key: Key, **overrides: object) -> str:
    # The CLI uses the wall clock, so the token is minted around now.
    now = int(time.time())
    return mint(key, base_claims(iat=now, exp=now + 60, **overrides))


@pytest.fixture
def jwks_file(tmp_path: Path, ec_key: Key) -> str:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(public_jwks(ec_key)))
    return str(path)


def run(token: str, *args: str) -> tuple[int, str, str]:
    """`exchange verify - ARGS` with `token` on stdin, as the CLI takes it."""
    result = CliRunner().invoke(verify_command, ["-", *args], input=token)
    return result.exit_code, result.stdout, result.stderr


def test_valid_token_prints_claims_json(jwks_file: str, ec_key: Key) -> None:
    code, out, _ = run(
        live_token(ec_key),
        "--issuer",
        ISSUER,
        "--audience",
        AUDIENCE,
        "--jwks-file",
        jwks_file,
        "--purpose",
        PURPOSE,
    )
    assert code == 0
    claims = json.loads(out)
    assert (claims["sub"], claims["scope"], claims["aud"]) == ("alice", PURPOSE, AUDIENCE)


def test_rejected_token_exits_1_with_the_reason(jwks_file: str, ec_key: Key) -> None:
    token = live_token(ec_key, scope="payments.refund")
    code, out, err = run(
        token, "--issuer", ISSUER, "--audience", AUDIENCE, "--jwks-file", jwks_file, "--purpose", PURPOSE
    )
    assert code == 1
    assert out == ""
    assert err.startswith("rejected: wrong_purpose")


def test_token_from_stdin(jwks_file: str, ec_key: Key) -> None:
    code, out, _ = run(
        live_token(ec_key) + "\n", "--issuer", ISSUER, "--audience", AUDIENCE, "--jwks-file", jwks_file
    )
    assert code == 0 and json.loads(out)["sub"] == "alice"


def test_a_token_on_the_command_line_is_refused(jwks_file: str, ec_key: Key) -> None:
    # Red team round 2: argv is readable by every local user (the process list) and lands in the
    # shell's history; a credential never goes there.
    args = [live_token(ec_key), "--issuer", ISSUER, "--audience", AUDIENCE, "--jwks-file", jwks_file]
    result = CliRunner().invoke(verify_command, args)
    assert result.exit_code == 2
    assert "pass the token on stdin" in result.stderr and result.stdout == ""


def test_jwks_uri_is_fetched(jwks_server: JWKSServer, ec_key: Key) -> None:
    jwks_server.publish(ec_key)
    code, out, _ = run(
        live_token(ec_key), "--issuer", ISSUER, "--audience", AUDIENCE, "--jwks-uri", jwks_server.url
    )
    assert code == 0 and json.loads(out)["sub"] == "alice"
    assert jwks_server.fetches == 1


def test_unreachable_jwks_is_keys_unavailable_with_the_fetch_error(
    jwks_server: JWKSServer, ec_key: Key
) -> None:
    jwks_server.status = 500
    code, _, err = run(
        live_token(ec_key), "--issuer", ISSUER, "--audience", AUDIENCE, "--jwks-uri", jwks_server.url
    )
    assert code == 1
    # Not "unknown_key": the kid may well be right; the keys could not be had.
    assert err.startswith("rejected: keys_unavailable") and "HTTP 500" in err


def test_insecure_jwks_uri_is_a_handled_error(ec_key: Key) -> None:
    code, _, err = run(
        mint(ec_key), "--issuer", ISSUER, "--audience", AUDIENCE, "--jwks-uri", "http://jwks.test/"
    )
    assert code == 1 and "https" in err


def test_both_key_sources_is_a_usage_error(jwks_file: str, ec_key: Key) -> None:
    code, _, _ = run(
        mint(ec_key),
        "--issuer",
        ISSUER,
        "--audience",
        AUDIENCE,
        "--jwks-file",
        jwks_file,
        "--jwks-uri",
        "https://x",
    )
    assert code == 2


class TestAmbassadorCommand:
    def test_routes_and_purpose_together_is_a_usage_error(self, jwks_file: str, tmp_path: Path) -> None:
        from exchange.cli.ambassador import ambassador_command

        routes = tmp_path / "routes.toml"
        routes.write_text('[[route]]\nprefix = "/"\nopen = true\n')
        args = ["--upstream", "http://127.0.0.1:1", "--issuer", ISSUER, "--audience", AUDIENCE,
                "--jwks-file", jwks_file, "--routes", str(routes), "--purpose", PURPOSE]  # fmt: skip
        assert CliRunner().invoke(ambassador_command, args).exit_code == 2

    @pytest.mark.parametrize(
        ("extra", "message"),
        [
            (["--listen", "nonsense"], "host:port"),
            (["--upstream", "ftp://x"], "upstream"),
            (["--jwks-uri", "http://jwks.test/"], "https"),
        ],
    )
    def test_bad_settings_fail_before_serving(self, extra: list[str], message: str) -> None:
        from exchange.cli.ambassador import ambassador_command

        args = ["--upstream", "http://127.0.0.1:1", "--issuer", ISSUER, "--audience", AUDIENCE, *extra]
        result = CliRunner().invoke(ambassador_command, args)
        assert result.exit_code == 1
        assert message in result.stderr
