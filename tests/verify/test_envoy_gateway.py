"""`exchange gateway --proxy envoy` asked exactly the way Envoy's ext_authz HTTP service asks.

No Envoy binary is obtainable here (no Debian, PyPI or npm package), so these tests send the check
requests Envoy documents and builds (source/extensions/filters/common/ext_authz/ext_authz_http_impl.cc):
the original method; the path `path_prefix` + the original `:path` (query included) as the request line;
`content-length: 0`; the original `host`; `authorization` always; and only the other headers that
`authorization_request.allowed_headers` names (docs/VERIFY.md's config names `txn-token`, every
`x-purpose-` header and the method-override and rewrite headers), lower-cased, a repeated header's
values joined by ",". Envoy then sends the client a refusal's status, headers and body as we sent them;
on a 200 it sets the `allowed_upstream_headers` we answered and removes those we list in
`x-envoy-auth-headers-to-remove`. The gateway runs as a real process (granian), on loopback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import pytest
from joserfc.jwk import Key

from tests.verify.conftest import PURPOSE
from tests.verify.forward_auth_cases import BYPASS_PATHS, FORGED, OVERRIDES, gateway_and_upstream, raw, token

IDENTITY = ["x-purpose-sub", "x-purpose-scope", "x-purpose-claims", "x-purpose-txn-claims"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, ec_key: Key) -> Iterator[int]:
    with gateway_and_upstream(tmp_path_factory.mktemp("envoy-gateway"), ec_key, "envoy") as (_, port):
        yield port


def check(
    port: int, method: str, path: str, headers: Sequence[tuple[str, str]] = ()
) -> tuple[int, dict[str, str], bytes]:
    """The check Envoy sends for `method path` (path as the client sent it, query included)."""
    lines = [f"{method} /check{path} HTTP/1.1", "host: payments.test", "content-length: 0",
             *(f"{name.lower()}: {value}" for name, value in headers)]  # fmt: skip
    return raw(port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


def removed(headers: dict[str, str]) -> list[str]:
    value = headers.get("x-envoy-auth-headers-to-remove", "")
    return sorted(name.strip() for name in value.split(",") if name.strip())


class TestEnvoyChecks:
    def test_a_valid_token_is_allowed_with_our_identity_and_the_rest_removed(
        self, gateway: int, ec_key: Key
    ) -> None:
        status, headers, _ = check(gateway, "POST", "/payments/p-1?x=1", token(ec_key))
        assert status == 200
        assert (headers["x-purpose-sub"], headers["x-purpose-scope"]) == ("alice", PURPOSE)
        assert json.loads(headers["x-purpose-claims"])["sub"] == "alice"
        # Envoy removes after it sets: only the identity header we did not send is named.
        assert removed(headers) == ["x-purpose-txn-claims"]

    def test_an_open_route_names_every_identity_header_for_removal(self, gateway: int) -> None:
        status, headers, _ = check(gateway, "GET", "/open/x")
        assert status == 200
        assert not [name for name in headers if name.startswith("x-purpose-")]
        assert removed(headers) == sorted(IDENTITY)

    def test_no_token_is_401_with_the_bare_challenge(self, gateway: int) -> None:
        status, headers, body = check(gateway, "POST", "/payments/p-1")
        assert (status, headers["www-authenticate"], json.loads(body)) == (
            401, "Bearer", {"error": "invalid_token"},
        )  # fmt: skip
        assert "x-envoy-auth-headers-to-remove" not in headers

    def test_a_token_of_another_purpose_is_403(self, gateway: int, ec_key: Key) -> None:
        refund = token(ec_key, scope="payments.refund")
        status, headers, body = check(gateway, "POST", "/payments/p-1", refund)
        assert (status, headers["www-authenticate"], json.loads(body)) == (
            403, f'Bearer error="insufficient_scope", scope="{PURPOSE}"', {"error": "insufficient_scope"},
        )  # fmt: skip

    @pytest.mark.parametrize("path", BYPASS_PATHS)
    def test_a_non_canonical_path_is_refused(self, gateway: int, path: str) -> None:
        # normalize_path and merge_slashes off, escaped slashes kept: Envoy passes the path unchanged.
        assert check(gateway, "GET", path)[0] == 400

    @pytest.mark.parametrize("method", ["post", "Post"])
    def test_a_method_spelled_in_another_case_is_refused(
        self, gateway: int, ec_key: Key, method: str
    ) -> None:
        assert check(gateway, method, "/payments/p-1", token(ec_key, scope="other.purpose"))[0] == 400

    @pytest.mark.parametrize(("name", "value"), FORGED + OVERRIDES)
    @pytest.mark.parametrize("path", ["/open/x", "/accounts/1"])
    def test_a_client_identity_or_override_header_sent_to_the_check_is_refused(
        self, gateway: int, ec_key: Key, path: str, name: str, value: str
    ) -> None:
        # allowed_headers sends x-purpose-* and the override headers; headers_with_underscores_action:
        # REJECT_REQUEST stops `_` names at Envoy, and the gateway refuses them as well.
        assert check(gateway, "GET", path, [(name, value), *token(ec_key)])[0] == 400

    def test_two_authorization_headers_joined_by_envoy_are_refused(self, gateway: int, ec_key: Key) -> None:
        [(_, good)] = token(ec_key)
        for joined in (f"{good},Bearer junk", f"Bearer junk,{good}", f"{good}, {good}"):
            assert check(gateway, "GET", "/accounts/1", [("Authorization", joined)])[0] in (400, 401)

    @pytest.mark.parametrize("target", ["/checkx/open/x", "/open/x", "/check", "/Check/open/x"])
    def test_a_path_outside_the_prefix_is_refused(self, gateway: int, target: str) -> None:
        request = f"GET {target} HTTP/1.1\r\nhost: payments.test\r\ncontent-length: 0\r\n\r\n"
        assert raw(gateway, request.encode("ascii"))[0] == 400
