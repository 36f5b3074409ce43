"""An online bank's payment approvals: a client app of Purpose Exchange a person can click through.

Alice signs in at the dev identity provider (OpenID Connect code flow with PKCE), sees the payments
waiting for her approval and approves one: the bank asks the exchange for a `payments.approve`
purpose token carrying the payment as RFC 9396 authorization_details (exchange.client), then calls the
payments service with it. When her login is not strong enough the exchange answers with an RFC 9470
step-up, which the bank turns into "confirm with your second factor" and a new sign-in; a business
rule's denial is shown with its reason. No token ever reaches the browser: the identity token stays
in the server-side session, the purpose token lives for one request.

    .venv/bin/python examples/bank_app/app.py --port 8070      (with `make serve` and the payments
                                                                service running: see README.md)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

import httpx
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body
from web import HEADERS, Sessions, esc, page

from exchange.client import (
    ClientAuthFailed,
    InvalidRequest,
    PurposeDenied,
    PurposeTokenClient,
    RateLimited,
    StepUpRequired,
    Unavailable,
)
from exchange.verify.compact import b64url_encode, split_compact

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]


@dataclass(frozen=True, slots=True)
class Payment:
    id: str
    payee: str
    account: str
    amount: float
    currency: str


# The bank's own records: the payments waiting for each customer's approval.
PAYMENTS: dict[str, tuple[Payment, ...]] = {
    "alice": (
        Payment("p-1001", "Acme Office Supplies", "DE89370400440532013000", 250.00, "EUR"),
        Payment("p-1002", "Rue de Rivoli Leases", "FR1420041010050500013M02606", 12500.00, "EUR"),
    ),
}


@dataclass(frozen=True, slots=True)
class Settings:
    exchange: str  # the exchange's issuer URL (its token endpoint is discovered)
    idp: str  # the identity provider's issuer URL (the dev issuer of `make serve`)
    payments: str  # the payments service
    public_url: str  # where the browser reaches this app (for the redirect URI)
    client_id: str = "bank-web"

    @classmethod
    def from_env(cls, port: int = 8070) -> Settings:
        return cls(
            exchange=os.environ.get("BANK_EXCHANGE", "http://127.0.0.1:8080"),
            idp=os.environ.get("BANK_IDP", "http://127.0.0.1:8080/dev-idp"),
            payments=os.environ.get("BANK_PAYMENTS", "http://127.0.0.1:8090"),
            public_url=os.environ.get("BANK_URL", f"http://127.0.0.1:{port}"),
        )


def read_claims(id_token: str) -> dict[str, Any]:
    """The claims of the ID token this app just received from its provider's token endpoint.

    Read, not verified: it came straight from the provider over the back channel (OpenID Connect Core
    §3.1.3.7 lets TLS stand in for the signature there), and this app only displays who signed in.
    Every trust decision on it is the exchange's, which verifies it on each exchange.
    """
    claims = msgspec.json.decode(split_compact(id_token, 16384).payload)
    if not isinstance(claims, dict):
        raise ValueError("ID token payload is not an object")
    return claims


def create_app(settings: Settings) -> Litestar:
    sessions = Sessions()
    approved: dict[str, str] = {}  # payment id -> who approved it (from the payments service)
    exchange = PurposeTokenClient(settings.client_id, issuer=settings.exchange)
    http = httpx.AsyncClient(timeout=5.0, follow_redirects=False)
    callback = f"{settings.public_url}/callback"

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await exchange.aclose()
            await http.aclose()

    def respond(
        sid: str, content: str = "", *, status: int = 200, location: str | None = None
    ) -> Response[str]:
        headers = dict(HEADERS)
        if location is not None:
            headers["Location"] = location
            status = 303
        return Response(
            content,
            status_code=status,
            media_type="text/html",
            headers=headers,
            cookies=[Sessions.cookie(sid)],
        )

    def signed_in(session: dict[str, Any]) -> dict[str, Any] | None:
        user = session.get("user")
        if user is not None and user["exp"] <= time.time():
            session.pop("user", None)
            session["flash"] = {"kind": "info", "text": "Your sign-in has expired. Please sign in again."}
            return None
        return user

    def csrf_ok(session: dict[str, Any], data: dict[str, str]) -> bool:
        return hmac.compare_digest(session.get("csrf", "-"), data.get("csrf", ""))

    @get("/", sync_to_thread=False)
    def home(request: Request[Any, Any, Any]) -> Response[str]:
        sid, session = sessions.open(request)
        flash = session.pop("flash", None)
        notice = ""
        if flash is not None:
            # "html" flashes are built by this app from escaped parts only (the step-up button).
            content = flash["html"] if "html" in flash else esc(flash["text"])
            notice = f'<div class="msg {esc(flash["kind"])}" role="status">{content}</div>'
        user = signed_in(session)
        if user is None:
            body = (
                f"{notice}<p>Sign in to see the payments waiting for your approval.</p>"
                '<p><a class="button" href="/login">Sign in</a></p>'
            )
            return respond(sid, page("Welcome", body))
        csrf = session.setdefault("csrf", secrets.token_urlsafe(24))
        rows = []
        for p in PAYMENTS.get(user["sub"], ()):
            if p.id in approved:
                action = f"Approved by {esc(approved[p.id])}"
            else:
                action = (
                    f'<form method="post" action="/payments/{esc(p.id)}/approve" class="inline">'
                    f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
                    f'<button aria-label="Approve {esc(p.id)}">Approve</button></form>'
                )
            rows.append(
                f'<tr id="{esc(p.id)}"><td>{esc(p.id)}</td>'
                f"<td>{esc(p.payee)}<br><small>{esc(p.account)}</small></td>"
                f"<td>{p.amount:,.2f} {esc(p.currency)}</td><td>{action}</td></tr>"
            )
        table = (
            "<table><tr><th>Payment</th><th>To</th><th>Amount</th><th></th></tr>" + "".join(rows) + "</table>"
            if rows
            else "<p>No payments are waiting for your approval.</p>"
        )
        return respond(sid, page("Payments to approve", notice + table, user=user, csrf=csrf))

    @get("/login", sync_to_thread=False)
    def login(request: Request[Any, Any, Any]) -> Response[str]:
        sid, session = sessions.open(request)
        verifier = secrets.token_urlsafe(48)
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        session["login"] = {"state": state, "nonce": nonce, "verifier": verifier}
        params = {
            "response_type": "code",
            "client_id": settings.client_id,
            "redirect_uri": callback,
            "scope": "openid",
            "state": state,
            "nonce": nonce,
            "code_challenge": b64url_encode(hashlib.sha256(verifier.encode()).digest()).decode(),
            "code_challenge_method": "S256",
        }
        step_up = session.get("step_up") if request.query_params.get("step_up") == "1" else None
        if step_up is not None:
            # RFC 9470 §4: ask the provider for exactly what the exchange said was missing.
            params["prompt"] = "login"
            if step_up.get("acr_values"):
                params["acr_values"] = step_up["acr_values"]
            if step_up.get("max_age") is not None:
                params["max_age"] = str(step_up["max_age"])
        return respond(sid, location=f"{settings.idp}/authorize?{urlencode(params)}")

    @get("/callback")
    async def signed_in_at_idp(request: Request[Any, Any, Any]) -> Response[str]:
        sid, session = sessions.open(request)
        pending = session.pop("login", None)
        query = request.query_params
        if (
            pending is None
            or not hmac.compare_digest(pending["state"], query.get("state", ""))
            or query.get("iss") not in (None, settings.idp)  # RFC 9207: the answer is from our provider
            or not query.get("code")
        ):
            session["flash"] = {
                "kind": "error",
                "text": "That sign-in did not come from here. Please sign in again.",
            }
            return respond(sid, location="/")
        answer = await http.post(
            f"{settings.idp}/token",
            data={
                "grant_type": "authorization_code",
                "code": query["code"],
                "redirect_uri": callback,
                "client_id": settings.client_id,
                "code_verifier": pending["verifier"],
            },
        )
        try:
            id_token = answer.json()["id_token"] if answer.status_code == 200 else None
            claims = read_claims(id_token) if isinstance(id_token, str) else {}
        except (ValueError, KeyError):
            id_token, claims = None, {}
        if not id_token or claims.get("nonce") != pending["nonce"] or claims.get("iss") != settings.idp:
            session["flash"] = {
                "kind": "error",
                "text": "The sign-in could not be completed. Please try again.",
            }
            return respond(sid, location="/")
        sid = sessions.rotate(sid)
        stepped_up = session.pop("step_up", None) is not None
        session["user"] = {
            "sub": claims["sub"],
            "amr": list(claims.get("amr", [])),
            "exp": claims["exp"],
            "id_token": id_token,
        }
        session["csrf"] = secrets.token_urlsafe(24)
        if stepped_up:
            session["flash"] = {
                "kind": "info",
                "text": "Thank you, you are signed in again. Approve the payment once more.",
            }
        return respond(sid, location="/")

    @post("/payments/{payment_id:str}/approve")
    async def approve(request: Request[Any, Any, Any], payment_id: str, data: Form) -> Response[str]:
        sid, session = sessions.open(request)
        user = signed_in(session)
        if user is None or not csrf_ok(session, data):
            return respond(sid, location="/")
        payment = next((p for p in PAYMENTS.get(user["sub"], ()) if p.id == payment_id), None)
        if payment is None:
            session["flash"] = {"kind": "error", "text": "There is no such payment waiting for you."}
            return respond(sid, location="/")
        session["flash"] = await approve_payment(session, user, payment)
        return respond(sid, location="/")

    async def approve_payment(
        session: dict[str, Any], user: dict[str, Any], payment: Payment
    ) -> dict[str, str]:
        """The whole approval: a purpose token for this payment, then the payments service. A flash."""
        details = [
            {
                "type": "payment",
                "payment_id": payment.id,
                "amount": payment.amount,
                "currency": payment.currency,
            }
        ]
        try:
            token = await exchange.aget("payments.approve", user["id_token"], authorization_details=details)
        except StepUpRequired as step_up:
            session["step_up"] = {"acr_values": step_up.acr_values, "max_age": step_up.max_age}
            if step_up.acr_values:
                why = "Approving a payment needs your second factor. Please confirm with your second factor."
                label = "Confirm with your second factor"
            else:
                why = "Approving a payment needs a recent sign-in. Please sign in again."
                label = "Sign in again"
            return {
                "kind": "step_up",
                "html": f"<p><b>{esc(why)}</b></p>"
                f'<p><a class="button" href="/login?step_up=1">{esc(label)}</a></p>',
            }
        except PurposeDenied as denied:
            return {
                "kind": "denied",
                "text": f"Payment {payment.id} cannot be approved: {denied.description}.",
            }
        except RateLimited as limited:
            wait = f" Try again in {int(limited.retry_after)} seconds." if limited.retry_after else ""
            return {"kind": "error", "text": f"You have approved too many payments for now.{wait}"}
        except Unavailable:
            return {
                "kind": "error",
                "text": "Approvals are unavailable right now. Please try again in a moment.",
            }
        except InvalidRequest as invalid:
            if invalid.description == "subject_token is invalid":
                session.pop("user", None)
                return {"kind": "info", "text": "Your sign-in is no longer valid. Please sign in again."}
            return {
                "kind": "error",
                "text": f"Something went wrong on our side (reference {invalid.request_id}).",
            }
        except ClientAuthFailed as failed:
            return {
                "kind": "error",
                "text": f"Something went wrong on our side (reference {failed.request_id}).",
            }
        try:
            answer = await http.post(
                f"{settings.payments}/payments/{payment.id}/approve",
                headers={"Authorization": token.authorization},
            )
        except httpx.HTTPError:
            return {"kind": "error", "text": "The payments service did not answer. Please try again."}
        if answer.status_code not in (200, 201):
            return {
                "kind": "error",
                "text": f"The payments service refused the approval (HTTP {answer.status_code}).",
            }
        approved[payment.id] = str(answer.json().get("approved_by", user["sub"]))
        return {"kind": "approved", "text": f"Payment {payment.id} to {payment.payee} is approved."}

    @post("/logout")
    async def logout(request: Request[Any, Any, Any], data: Form) -> Response[str]:
        sid, session = sessions.open(request)
        if csrf_ok(session, data):
            session.clear()
            sid = sessions.rotate(sid)
        return respond(sid, location="/")

    @get("/health", sync_to_thread=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return Litestar(
        [home, login, signed_in_at_idp, approve, logout, health],
        lifespan=[lifespan],
        openapi_config=None,
    )


def app_from_env() -> Litestar:
    """Factory for `granian --factory` / `uvicorn --factory`."""
    return create_app(Settings.from_env())


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8070)
    options = parser.parse_args()
    uvicorn.run(create_app(Settings.from_env(options.port)), host=options.host, port=options.port)
