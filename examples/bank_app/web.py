"""The bank app's browser side: server-side sessions and the HTML pages (everything escaped)."""

from __future__ import annotations

import html
import secrets
import time
from typing import Any

from litestar import Request
from litestar.datastructures import Cookie

COOKIE = "bank_session"
SESSION_TTL = 3600
MAX_SESSIONS = 10_000
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
}


class Sessions:
    """Server-side sessions: the browser holds only a random id (HttpOnly, SameSite=Lax cookie).

    The id changes at every sign-in (no session fixation); sessions expire after an hour and their
    number is bounded.
    """

    def __init__(self) -> None:
        self._data: dict[str, tuple[float, dict[str, Any]]] = {}

    def open(self, request: Request[Any, Any, Any]) -> tuple[str, dict[str, Any]]:
        sid = request.cookies.get(COOKIE, "")
        entry = self._data.get(sid)
        if entry is not None and entry[0] > time.time():
            return sid, entry[1]
        return self._new({})

    def rotate(self, sid: str) -> str:
        _, data = self._data.pop(sid, (0.0, {}))
        return self._new(data)[0]

    def _new(self, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        now = time.time()
        if len(self._data) >= MAX_SESSIONS:
            self._data = {k: v for k, v in self._data.items() if v[0] > now}
            while len(self._data) >= MAX_SESSIONS:
                self._data.pop(next(iter(self._data)))
        sid = secrets.token_urlsafe(32)
        self._data[sid] = (now + SESSION_TTL, data)
        return sid, data

    @staticmethod
    def cookie(sid: str) -> Cookie:
        return Cookie(key=COOKIE, value=sid, httponly=True, samesite="lax", path="/", max_age=SESSION_TTL)


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: str, *, user: dict[str, Any] | None = None, csrf: str = "") -> str:
    who = ""
    if user is not None:
        factor = "password and second factor" if "mfa" in user["amr"] else "password"
        who = (
            f'<div class="who">Signed in as <b>{esc(user["sub"])}</b> ({factor}) '
            f'<form method="post" action="/logout" class="inline">'
            f'<input type="hidden" name="csrf" value="{esc(csrf)}"><button>Sign out</button></form></div>'
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)} · Example Bank</title>
<style>
body{{font-family:system-ui,sans-serif;max-width:44rem;margin:2rem auto;color:#1d2733}}
header{{border-bottom:2px solid #1f5fa8;margin-bottom:1rem}} header b{{color:#1f5fa8;font-size:1.3rem}}
.who{{color:#555}} .inline{{display:inline;margin-left:.6rem}}
table{{width:100%;border-collapse:collapse}}
td,th{{text-align:left;padding:.5rem;border-bottom:1px solid #ddd}}
.msg{{padding:.8rem 1rem;border-radius:.3rem;margin:1rem 0}}
.approved{{background:#e6f4ea;border:1px solid #8bc59a}}
.denied{{background:#fdecea;border:1px solid #e3a29b}}
.step_up{{background:#fff4e5;border:1px solid #e8b765}} .error{{background:#f1f1f1;border:1px solid #bbb}}
.info{{background:#e8f0fe;border:1px solid #9ab}}
button,.button{{font-size:.95rem;padding:.35rem 1rem;background:#1f5fa8;color:#fff;border:0;
border-radius:.25rem;text-decoration:none;cursor:pointer}}
</style></head><body><header><b>Example Bank</b> · payment approvals</header>{who}
<h1>{esc(title)}</h1>{body}</body></html>"""
