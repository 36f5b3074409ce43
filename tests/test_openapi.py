"""The OpenAPI document: served, generated from the wire Structs, and true of a real `exchange serve`.

A schemathesis run generates requests from the document (valid and invalid forms, odd headers and
methods) against the real service and checks every answer: never a 5xx, and status, content type,
headers and body always as the document says.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from schemas.wire import JWKSet, Liveness, Readiness, ServerMetadata
from tests.conftest import exchange_form, write_config
from tests.idp import FakeIdP
from tests.server import Server, free_port

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, idp: FakeIdP, idp_ec: FakeIdP) -> Iterator[Server]:
    folder: Path = tmp_path_factory.mktemp("openapi")
    port = free_port()
    server = Server(write_config(folder, port, idp, idp_ec), port)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def document(served: Server) -> dict[str, Any]:
    resp = httpx.get(f"{served.url}/openapi.json", timeout=10)
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    return dict(resp.json())


@pytest.fixture(scope="module")
def api(served: Server) -> Any:
    # Loaded from the running service; its `servers` entry (the issuer) is where requests go.
    return schemathesis.openapi.from_url(f"{served.url}/openapi.json")


def conforms(document: dict[str, Any], component: str, body: Any) -> None:
    """Validate `body` against one of the document's component schemas (JSON Schema 2020-12)."""
    schema = {"$ref": f"#/components/schemas/{component}", "components": document["components"]}
    jsonschema_rs.Draft202012Validator(schema).validate(body)


class TestDocument:
    def test_describes_the_token_metadata_jwks_and_health_endpoints(self, document: dict[str, Any]) -> None:
        assert document["openapi"] == "3.1.0"
        assert set(document["paths"]) == {
            "/token",
            "/.well-known/jwks.json",
            "/.well-known/oauth-authorization-server",
            "/healthz",
            "/readyz",
        }
        assert document["servers"] == [{"url": document["servers"][0]["url"]}]

    def test_a_granted_exchange_and_a_refusal_are_what_the_document_says(
        self, served: Server, document: dict[str, Any], idp: FakeIdP
    ) -> None:
        granted = httpx.post(f"{served.url}/token", data=exchange_form(idp.token()), timeout=10)
        refused = httpx.post(f"{served.url}/token", data=exchange_form(idp.token(amr=["pwd"])), timeout=10)

        assert granted.status_code == 200 and refused.status_code == 400
        conforms(document, "TokenResponse", granted.json())
        conforms(document, "ErrorResponse", refused.json())
        with pytest.raises(jsonschema_rs.ValidationError):  # the document is strict where the Struct is
            conforms(document, "TokenResponse", {**granted.json(), "refresh_token": "x"})

    def test_the_served_documents_decode_strictly_into_their_structs(self, served: Server) -> None:
        jwks = msgspec.json.decode(httpx.get(f"{served.url}/.well-known/jwks.json").content, type=JWKSet)
        meta = httpx.get(f"{served.url}/.well-known/oauth-authorization-server").content
        assert jwks.keys and all(k.use == "sig" for k in jwks.keys)
        assert msgspec.json.decode(meta, type=ServerMetadata).token_endpoint.endswith("/token")
        health, ready = (httpx.get(f"{served.url}/{path}").content for path in ("healthz", "readyz"))
        assert msgspec.json.decode(health, type=Liveness).status == "ok"
        assert msgspec.json.decode(ready, type=Readiness).status == "ready"

    def test_the_published_keys_carry_no_private_member(self, document: dict[str, Any]) -> None:
        for name in ("ECPublicKey", "RSAPublicKey", "OKPPublicKey"):
            schema = document["components"]["schemas"][name]
            assert schema["additionalProperties"] is False
            assert not {"d", "p", "q", "dp", "dq", "qi"} & set(schema["properties"])


VALID, INVALID = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
# Valid requests for every operation; invalid ones where there is input to get wrong (the GETs take none).
CASES = [
    ("/token", "POST", VALID),
    ("/token", "POST", INVALID),
    ("/.well-known/jwks.json", "GET", VALID),
    ("/.well-known/oauth-authorization-server", "GET", VALID),
    ("/healthz", "GET", VALID),
    ("/readyz", "GET", VALID),
]


# schemathesis' own pytest loader does not run under this pytest, so the test drives its hypothesis
# strategies directly: the same generated cases, the same checks.
@pytest.mark.parametrize(("path", "method", "mode"), CASES, ids=[f"{m} {p} {g.value}" for p, m, g in CASES])
def test_generated_requests_never_get_a_5xx_or_an_answer_outside_the_document(
    api: Any, path: str, method: str, mode: GenerationMode
) -> None:
    operation = api[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: Any) -> None:
        case.call_and_validate(checks=CHECKS)

    check()
