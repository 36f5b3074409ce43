# ruff: noqa: E501  (the corpus is a table: one row per line reads best)
"""The attack corpus against POST /token over real HTTP: one row per hostile subject token, each
asserting the exact opaque answer and the precise reason in the audit record (docs/THREAT_MODEL.md maps
each attack class to its rows). Client-authentication cross-use lives in tests/test_client_auth.py,
the downstream verifier's corpus in tests/verify/test_attacks.py, bit flips in tests/test_bitflips.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import forge
from tests.conftest import exchange_form, write_config
from tests.idp import FakeIdP, load_key
from tests.server import Server, free_port

EC2_ISSUER = "https://idp-ec2.example.com"
OPAQUE = {"error": "invalid_request", "error_description": "subject_token is invalid"}
# A second ES256 issuer with a key of its own: one trusted issuer's key must never check another's.
EXTRA = f'''
[[trusted_issuers]]
issuer = "{EC2_ISSUER}"
jwks_file = "{{jwks}}"
audiences = ["purpose-exchange"]
algorithms = ["ES256"]
'''


@dataclass
class Keys:
    rsa: FakeIdP  # https://idp.example.com, RS256
    ec: FakeIdP  # https://idp-ec.example.com, ES256
    ec2: FakeIdP  # EC2_ISSUER, ES256, the "attacker_ec" key pair
    listener: forge.Listener

    def claims(self, **overrides: Any) -> dict[str, Any]:
        return self.ec.claims(**overrides)

    def header(self, **members: Any) -> dict[str, Any]:
        header = {"alg": "ES256", "kid": self.ec.kid, "typ": "JWT"}
        header.update(members)
        return {name: value for name, value in header.items() if value is not None}

    def signed(self, header: Any = None, payload: Any = None) -> str:
        return forge.sign(
            self.ec.key,
            self.header() if header is None else header,
            self.claims() if payload is None else payload,
        )


@pytest.fixture(scope="module")
def keys(idp: FakeIdP, idp_ec: FakeIdP) -> Iterator[Keys]:
    listener = forge.Listener()
    try:
        yield Keys(idp, idp_ec, FakeIdP(EC2_ISSUER, "attacker_ec", "ES256"), listener)
    finally:
        listener.close()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("attacks")
    port = free_port()
    extra = EXTRA.format(jwks=keys.ec2.write_jwks(folder / "idp-ec2-jwks.json"))
    server = Server(write_config(folder, port, keys.rsa, keys.ec, extra=extra), port)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


Row = tuple[str, Callable[[Keys], str], str]


def ecdsa(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _with_sig(k: Keys, signature: bytes) -> str:
    return forge.with_signature(k.header(), k.claims(), signature)


def _genuine_rs(k: Keys) -> tuple[int, int]:
    raw = forge.b64decode(k.signed().rsplit(".", 1)[1])
    return int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")


def _hs_rows() -> list[Row]:
    rows: list[Row] = []
    for issuer in ("rsa", "ec"):
        names = ("pem_spki", "der_spki", "jwk_json", "jwk_compact") + (
            ("pem_pkcs1", "n_bytes", "n_b64url") if issuer == "rsa" else ("point", "x_b64url")
        )
        for name in names:

            def token(k: Keys, issuer: str = issuer, name: str = name) -> str:
                idp = getattr(k, issuer)
                secret = forge.public_key_encodings(idp.key)[name]
                return forge.hs256(secret, {"alg": "HS256", "kid": idp.kid, "typ": "JWT"}, idp.claims())

            rows.append((f"hs256-{issuer}-{name}", token, "algorithm_not_allowed"))
    return rows


N = forge.P256_N
ROWS: list[Row] = [
    # alg "none" in every case, with and without a signature
    *[(f"alg-{a}-empty", lambda k, a=a: forge.with_signature(k.header(alg=a), k.claims(), b""), "algorithm_not_allowed")
      for a in ("none", "None", "NONE", "nOnE")],
    *[(f"alg-{a}-signed", lambda k, a=a: k.signed(k.header(alg=a)), "algorithm_not_allowed") for a in ("none", "NONE")],
    ("es256-empty-signature", lambda k: _with_sig(k, b""), "bad_signature"),
    # algorithms outside the issuer's allow-list (ES256 only)
    *[(f"alg-{a or 'empty'}", lambda k, a=a: k.signed(k.header(alg=a)), "algorithm_not_allowed")
      for a in ("ES384", "ES512", "RS256", "PS256", "EdDSA", "Ed25519", "ES256K", "HS256", "es256", "", "ES256 ")],
    ("alg-not-a-string", lambda k: k.signed(k.header(alg=256)), "malformed"),
    ("alg-missing", lambda k: k.signed({"kid": k.ec.kid}), "malformed"),
    ("rs256-for-the-ec-issuer", lambda k: forge.sign(k.rsa.key, {"alg": "RS256", "kid": k.rsa.kid}, k.claims()),
     "algorithm_not_allowed"),
    *_hs_rows(),
    # keys named by the token itself
    ("embedded-jwk", lambda k: forge.sign(k.ec2.key, k.header(jwk=k.ec2.key.as_dict(private=False)), k.claims()),
     "forbidden_header"),
    ("embedded-x5c", lambda k: k.signed(k.header(x5c=["MIIBszCCAVmgAwIBAgIU"])), "forbidden_header"),
    ("jku", lambda k: k.signed(k.header(jku=k.listener.url)), "forbidden_header"),
    ("x5u", lambda k: k.signed(k.header(x5u=k.listener.url)), "forbidden_header"),
    ("jku-and-unknown-kid", lambda k: k.signed(k.header(jku=k.listener.url, kid="fetch-me")), "forbidden_header"),
    # kid values that must only ever be dictionary keys
    *[(f"kid-{name}", lambda k, v=v: k.signed(k.header(kid=v)), "unknown_kid") for name, v in (
        ("traversal", "../../../../etc/passwd"), ("abs-path", "/dev/zero"), ("sql", "' OR '1'='1"),
        ("sql-drop", "x'; DROP TABLE audit_records;--"), ("shell", "$(touch /tmp/pwned)"), ("backtick", "`id`"),
        ("pipe", "| cat /etc/passwd"), ("nul", "\u0000"), ("percent-nul", "%00"), ("crlf", "a\r\nX-Evil: 1"),
        ("unicode", "\uff4b\uff49\uff44"), ("longest-allowed", "k" * 256))],
    *[(f"kid-{name}", lambda k, v=v: k.signed(k.header(kid=v)), "missing_kid") for name, v in (
        ("oversize", "k" * 257), ("number", 7), ("list", ["x"]), ("empty", ""))],
    ("kid-huge", lambda k: k.signed(k.header(kid="k" * 4000)), "malformed"),  # past the header cap
    ("kid-absent", lambda k: k.signed({"alg": "ES256", "typ": "JWT"}), "missing_kid"),
    # processing we do not do
    *[(f"crit-{name}", lambda k, v=v: k.signed(k.header(crit=v, exp=1)), "forbidden_header")
      for name, v in (("unknown", ["exp"]), ("empty", []), ("string", "exp"), ("b64", ["b64"]))],
    ("b64-false", lambda k: k.signed(k.header(b64=False, crit=["b64"])), "forbidden_header"),
    ("b64-false-alone", lambda k: k.signed(k.header(b64=False)), "forbidden_header"),
    *[(f"cty-{v}", lambda k, v=v: k.signed(k.header(cty=v)), "forbidden_header") for v in ("JWT", "jwt", "json")],
    ("zip", lambda k: k.signed(k.header(zip="DEF")), "forbidden_header"),
    # ECDSA signatures out of shape or out of range
    ("ecdsa-zeros", lambda k: _with_sig(k, bytes(64)), "bad_signature"),
    *[(f"ecdsa-length-{n}", lambda k, n=n: _with_sig(k, forge.b64decode(k.signed().rsplit(".", 1)[1])[:n].ljust(n, b"\1")),
       "bad_signature") for n in (1, 32, 63, 65, 96, 128)],
    ("ecdsa-der-encoded", lambda k: _with_sig(k, forge.der(_genuine_rs(k))), "bad_signature"),
    ("ecdsa-r-zero", lambda k: _with_sig(k, ecdsa(0, _genuine_rs(k)[1])), "bad_signature"),
    ("ecdsa-s-zero", lambda k: _with_sig(k, ecdsa(_genuine_rs(k)[0], 0)), "bad_signature"),
    ("ecdsa-r-n", lambda k: _with_sig(k, ecdsa(N, _genuine_rs(k)[1])), "bad_signature"),
    ("ecdsa-s-n", lambda k: _with_sig(k, ecdsa(_genuine_rs(k)[0], N)), "bad_signature"),
    ("ecdsa-r-plus-n", lambda k: _with_sig(k, ecdsa(_genuine_rs(k)[0] + N, _genuine_rs(k)[1])) if _genuine_rs(k)[0] + N < 2**256 else _with_sig(k, ecdsa(N + 1, 1)), "bad_signature"),
    ("ecdsa-max", lambda k: _with_sig(k, b"\xff" * 64), "bad_signature"),
    # structure
    ("two-segments", lambda k: k.signed().rsplit(".", 1)[0], "malformed"),
    ("four-segments", lambda k: k.signed() + ".AAAA", "malformed"),
    ("jwe-five-segments", lambda k: forge.b64(b'{"alg":"RSA-OAEP","enc":"A256GCM"}') + ".AAAA.AAAA.AAAA.AAAA", "malformed"),
    ("trailing-dot", lambda k: k.signed() + ".", "malformed"),
    ("leading-dot", lambda k: "." + k.signed(), "malformed"),
    ("padded-signature", lambda k: k.signed() + "==", "malformed"),
    ("padded-header", lambda k: "=".join(k.signed().split(".", 1)), "malformed"),
    ("space-inside", lambda k: k.signed()[:20] + " " + k.signed()[20:], "malformed"),
    ("trailing-newline", lambda k: k.signed() + "\n", "malformed"),
    ("tab", lambda k: "\t" + k.signed(), "malformed"),
    ("standard-base64-alphabet", lambda k: standard_alphabet(k.signed()), "malformed"),
    ("non-canonical-last-char", lambda k: forge.flip_unused_bits(k.signed()), "malformed"),
    ("json-flattened", lambda k: json.dumps(dict(zip(("protected", "payload", "signature"), k.signed().split("."), strict=True))), "malformed"),
    ("json-general", lambda k: json.dumps({"payload": k.signed().split(".")[1], "signatures": [{"protected": k.signed().split(".")[0], "signature": k.signed().split(".")[2]}]}), "malformed"),
    ("nested-jwt-payload-string", lambda k: k.signed(k.header(), json.dumps(k.signed()).encode()), "malformed"),
    ("nested-jwt-payload-raw", lambda k: k.signed(k.header(), k.signed().encode()), "malformed"),
    ("nested-jwt-cty", lambda k: k.signed(k.header(cty="JWT"), k.signed().encode()), "malformed"),  # never unwrapped
    # duplicate member names, in the header and in the claims, at any depth, escaped or not
    ("dup-header-alg", lambda k: k.signed(b'{"alg":"ES256","kid":"%s","alg":"ES256"}' % k.ec.kid.encode()), "duplicate_member"),
    ("dup-header-kid", lambda k: k.signed(b'{"alg":"ES256","kid":"x","kid":"%s"}' % k.ec.kid.encode()), "duplicate_member"),
    ("dup-claim-sub", lambda k: k.signed(None, forge.json_with(k.claims(), b',"sub":"mallory"')), "duplicate_member"),
    ("dup-claim-iss", lambda k: k.signed(None, forge.json_with(k.claims(), b',"iss":"%s"' % k.ec.issuer.encode())), "duplicate_member"),
    ("dup-claim-escaped", lambda k: k.signed(None, forge.json_with(k.claims(), b',"\\u0073ub":"mallory"')), "duplicate_member"),
    ("dup-claim-nested", lambda k: k.signed(None, forge.json_with(k.claims(), b',"act":{"sub":"a","sub":"b"}')), "duplicate_member"),
    ("dup-claim-in-list", lambda k: k.signed(None, forge.json_with(k.claims(), b',"x":[{"a":1,"a":2}]')), "duplicate_member"),
    # not UTF-8, not an object
    ("payload-not-utf8", lambda k: k.signed(None, b'{"iss":"\xff\xfe"}'), "malformed"),
    ("header-not-utf8", lambda k: k.signed(b'{"alg":"ES256","kid":"\xff"}'), "malformed"),
    *[(f"payload-{name}", lambda k, v=v: k.signed(None, v), "malformed")
      for name, v in (("array", b"[]"), ("string", b'"x"'), ("number", b"1"), ("null", b"null"), ("true", b"true"),
                      ("empty", b""), ("truncated", b'{"iss":'), ("bom", b"\xef\xbb\xbf{}"), ("trailing", b"{}x"))],
    ("header-array", lambda k: k.signed(b'["ES256"]'), "malformed"),
    ("header-deep", lambda k: k.signed(b'{"alg":"ES256","x":' + b"[" * 1000 + b"]" * 1000 + b"}"), "malformed"),
    ("payload-deep", lambda k: k.signed(None, b'{"a":' + b"[" * 2500 + b"]" * 2500 + b"}"), "malformed"),
    # NumericDates and sub
    ("exp-1e400", lambda k: k.signed(None, forge.json_with(k.claims(exp=None), b',"exp":1e400')), "malformed"),
    ("exp-nan", lambda k: k.signed(None, forge.json_with(k.claims(exp=None), b',"exp":NaN')), "malformed"),
    ("exp-infinity", lambda k: k.signed(None, forge.json_with(k.claims(exp=None), b',"exp":Infinity')), "malformed"),
    *[(f"exp-{name}", lambda k, v=v: k.signed(None, k.claims(exp=v(int(time.time())))), "bad_numeric_date") for name, v in (
        ("2pow64", lambda now: 2**64), ("year-10000", lambda now: 253_402_300_800), ("negative", lambda now: -1),
        ("float", lambda now: now + 300.5), ("integral-float", lambda now: float(now + 300)), ("true", lambda now: True),
        ("string", lambda now: str(now + 300)), ("list", lambda now: [now + 300]))],
    ("exp-huge-integer", lambda k: k.signed(None, forge.json_with(k.claims(exp=None), b',"exp":' + b"9" * 400)), "bad_numeric_date"),
    *[(f"{claim}-float", lambda k, c=claim: k.signed(None, k.claims(**{c: time.time()})), "bad_numeric_date")
      for claim in ("iat", "nbf", "auth_time")],
    ("nbf-bool", lambda k: k.signed(None, k.claims(nbf=False)), "bad_numeric_date"),
    ("auth-time-string", lambda k: k.signed(None, k.claims(auth_time="yesterday")), "bad_numeric_date"),
    ("exp-missing", lambda k: k.signed(None, k.claims(exp=None)), "missing_exp"),
    *[(f"sub-{name}", lambda k, v=v: k.signed(None, {**k.claims(), "sub": v}), "missing_sub")
      for name, v in (("number", 123), ("empty", ""), ("list", ["alice"]), ("null", None), ("object", {"id": "alice"}), ("true", True))],
    ("sub-absent", lambda k: k.signed(None, k.claims(sub=None)), "missing_sub"),
    # size
    ("oversized", lambda k: k.signed(None, k.claims(padding="x" * 9000)), "oversized"),
    # time window (leeway 30 s)
    ("expired-beyond-leeway", lambda k: k.signed(None, k.claims(iat=int(time.time()) - 600, exp=int(time.time()) - 40)), "expired"),
    ("expired-within-leeway-cannot-be-minted", lambda k: k.signed(None, k.claims(iat=int(time.time()) - 600, exp=int(time.time()) - 10)), "expires_now"),
    ("nbf-beyond-leeway", lambda k: k.signed(None, k.claims(nbf=int(time.time()) + 40)), "not_yet_valid"),
    ("iat-beyond-leeway", lambda k: k.signed(None, k.claims(iat=int(time.time()) + 40)), "issued_in_future"),
    # issuer partial matches
    *[(f"iss-{name}", lambda k, v=v: k.signed(None, k.claims(iss=v)), "untrusted_issuer") for name, v in (
        ("trailing-slash", "https://idp-ec.example.com/"), ("prefix", "https://idp-ec.example.co"),
        ("suffix", "https://idp-ec.example.com.evil"), ("upper-scheme", "HTTPS://idp-ec.example.com"),
        ("path", "https://idp-ec.example.com/tenant"), ("space", " https://idp-ec.example.com"),
        ("port", "https://idp-ec.example.com:443"), ("http", "http://idp-ec.example.com"),
        ("list", ["https://idp-ec.example.com"]), ("exchange-itself", "http://127.0.0.1"), ("absent", None))],
    # one trusted issuer's key used for another
    ("ec-key-for-ec2-issuer", lambda k: k.signed(None, k.claims(iss=EC2_ISSUER)), "unknown_kid"),
    ("ec2-key-for-ec-issuer-own-kid", lambda k: forge.sign(k.ec2.key, {"alg": "ES256", "kid": k.ec2.kid}, k.claims()), "unknown_kid"),
    ("ec2-key-for-ec-issuer-ec-kid", lambda k: forge.sign(k.ec2.key, k.header(), k.claims()), "bad_signature"),
    ("rsa-key-for-ec-issuer-ec-kid", lambda k: forge.sign(k.rsa.key, k.header(alg="RS256"), k.claims()), "algorithm_not_allowed"),
    # audience substitution
    *[(f"aud-{name}", lambda k, v=v: forge.sign(k.rsa.key, {"alg": "RS256", "kid": k.rsa.kid}, k.rsa.claims(aud=v)), "wrong_audience")
      for name, v in (("other-issuers-audience", "other-app"), ("trailing-slash", "purpose-exchange/"),
                      ("upper", ["PURPOSE-EXCHANGE"]), ("number", 1), ("object", {"aud": "purpose-exchange"}),
                      ("token-endpoint", "http://127.0.0.1/token"), ("absent", None), ("empty-list", []))],
    # typ confusion
    ("access-token-declared-id-token", lambda k: k.signed(k.header(typ="at+jwt")), "access_token_declared_as_id_token"),
    ("app-at-jwt-declared-id-token", lambda k: k.signed(k.header(typ="application/AT+JWT")), "access_token_declared_as_id_token"),
    ("client-assertion-as-subject-token",
     lambda k: forge.sign(load_key("client_ec"), {"alg": "ES256", "kid": load_key("client_ec").thumbprint()},
                          {**k.claims(), "iss": "signer", "sub": "signer"}), "untrusted_issuer"),
]  # fmt: skip


def standard_alphabet(token: str) -> str:
    """The token in base64's standard alphabet (`+`, `/`); one without `-` or `_` gets a `+` appended.
    (One token, signed once: signing again gives another signature, perhaps without either.)"""
    spelled = token.replace("-", "+").replace("_", "/")
    return spelled if spelled != token else token + "+"


def post(server: Server, token: str, rid: str, **params: Any) -> httpx.Response:
    return httpx.post(
        f"{server.url}/token", data=exchange_form(token, **params), headers={"X-Request-ID": rid}, timeout=10
    )


@pytest.mark.parametrize(("case", "make", "reason"), ROWS, ids=[row[0] for row in ROWS])
def test_hostile_subject_token_is_refused_opaquely(
    target: Server, keys: Keys, case: str, make: Callable[[Keys], str], reason: str
) -> None:
    token = make(keys)
    rid = "atk-" + "".join(c if c.isalnum() or c in "._-" else "_" for c in case)[:60]
    resp = post(target, token, rid)
    assert resp.status_code == 400, resp.text
    assert resp.json() == OPAQUE
    record = target.audit(rid)
    assert (record["decision"], record["reason"]) == ("denied", f"subject_token:{reason}")
    assert token not in json.dumps(record)


def test_no_header_url_is_ever_fetched(target: Server, keys: Keys) -> None:
    for member in ("jku", "x5u"):
        post(target, keys.signed(keys.header(**{member: keys.listener.url})), f"atk-fetch-{member}")
    time.sleep(0.3)  # a fetch, had one been started, would have connected by now
    assert keys.listener.connections == 0


@pytest.mark.parametrize(
    ("claims", "declared"),
    [({"nbf": 20}, None), ({"iat": 20}, None), ({"typ": "JWT"}, None)],
    ids=["nbf-within-leeway", "iat-within-leeway", "id-token-typ-jwt"],
)
def test_within_the_leeway_is_accepted(
    target: Server, keys: Keys, claims: dict[str, Any], declared: Any
) -> None:
    now = int(time.time())
    shifted = {name: now + value for name, value in claims.items() if name != "typ"}
    resp = post(target, keys.signed(None, keys.claims(**shifted)), f"atk-ok-{time.monotonic_ns()}")
    assert resp.status_code == 200, resp.text


def test_a_purpose_token_is_never_a_subject_token(target: Server, keys: Keys) -> None:
    purpose = post(target, keys.signed(), "atk-purpose-1").json()["access_token"]
    for declared in ("urn:ietf:params:oauth:token-type:access_token", "urn:ietf:params:oauth:token-type:jwt"):
        resp = post(target, purpose, f"atk-replay-{declared[-3:]}", subject_token_type=declared)
        assert resp.json() == OPAQUE
        assert target.audit(f"atk-replay-{declared[-3:]}")["reason"] == "subject_token:untrusted_issuer"


def test_oversized_bodies_are_refused_before_parsing(target: Server, keys: Keys) -> None:
    for filler in ("x" * 70_000, "a=" * 40_000):
        resp = httpx.post(f"{target.url}/token", content=f"grant_type=x&f={filler}".encode(),
                          headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=10)  # fmt: skip
        assert resp.status_code in {400, 413} and resp.json()["error"] == "invalid_request"


FORM_KEYS = st.sampled_from(
    ["grant_type", "subject_token", "subject_token_type", "actor_token", "actor_token_type", "scope",
     "audience", "resource", "client_id", "client_secret", "client_assertion", "client_assertion_type",
     "requested_token_type", "authorization_details", "x"]
)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pairs=st.lists(st.tuples(FORM_KEYS, st.text(max_size=60)), max_size=8),
    raw=st.binary(max_size=120),
)
def test_random_form_bodies_never_give_a_5xx(
    target: Server, pairs: list[tuple[str, str]], raw: bytes
) -> None:
    from urllib.parse import urlencode

    for body in (urlencode(pairs).encode(), raw):
        resp = httpx.post(f"{target.url}/token", content=body,
                          headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=10)  # fmt: skip
        assert resp.status_code < 500, (body, resp.text)
        assert resp.headers["content-type"].startswith("application/json")
        assert set(resp.json()) <= {"error", "error_description", "denial", "acr_values", "max_age"}
