"""examples/bank_app in a real headless browser, beside the real exchange (with the repository's own
development config, as `make serve` runs it) and the real payments service: a person signs in,
approves a payment, is asked to confirm with a second factor, does, approves again, and sees a
business rule refuse a payment that is too large. No page, URL or cookie ever carries a JWT.

Screenshots of what the person sees are taken on the way; they are written to docs/img/ (the README
shows them) when those files are missing or BANK_APP_SCREENSHOTS=1 is set (`make screenshots`).
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

from tests.examples.conftest import CHROMIUM_ARGS, App
from tests.server import Server, free_port

ROOT = Path(__file__).resolve().parents[2]
DOCS_IMG = ROOT / "docs" / "img"
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")


def dev_config(folder: Path, port: int) -> Path:
    """The repository's exchange.toml, moved to this port and this folder (nothing else changes)."""
    text = (ROOT / "exchange.toml").read_text()
    for old, new in [
        ("127.0.0.1:8080", f"127.0.0.1:{port}"),
        ("sqlite:///var/exchange.db", f"sqlite:///{folder}/exchange.db"),
        ('"var/dev-idp-key.json"', f'"{folder}/dev-idp-key.json"'),
    ]:
        assert old in text, f"exchange.toml no longer has {old!r}: update this test"
        text = text.replace(old, new)
    config = folder / "exchange.toml"
    config.write_text(text)
    return config


class Person:
    """What a person does and sees; every page they see is checked for leaked tokens."""

    def __init__(self, page: Page, shots: Path) -> None:
        self.page = page
        self.shots = shots
        self.urls: list[str] = []
        page.on("response", lambda r: self.urls.extend([r.url, r.headers.get("location", "")]))

    def sees_no_token(self) -> None:
        html = self.page.content()
        assert not JWT.search(html), "a JWT reached the page"
        assert not JWT.search(self.page.url)
        for cookie in self.page.context.cookies():
            assert not JWT.search(cookie["value"]), f"cookie {cookie['name']} carries a JWT"

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"bank_app_{name}.png"))

    def signs_in(self, *, second_factor: bool) -> None:
        expect(self.page.get_by_role("heading", name="Sign in")).to_be_visible()
        expect(self.page.get_by_text("Development identity provider")).to_be_visible()
        expect(self.page.get_by_label("User name")).to_have_value("alice")
        if second_factor:
            self.page.get_by_label("Confirm with my second factor").check()
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_load_state()

    def status(self) -> str:
        return self.page.get_by_role("status").inner_text()


def test_approve_step_up_approve_and_a_business_denial(
    chromium: Path, apps: list[App], tmp_path: Path
) -> None:
    exchange_port = free_port()
    exchange = Server(dev_config(tmp_path, exchange_port), exchange_port)
    try:
        exchange.wait_ready()
        payments = App(
            ROOT / "examples" / "payments_service" / "app.py",
            free_port(),
            {"PAYMENTS_ISSUER": exchange.url},
            tmp_path / "payments.log",
        )
        apps.append(payments)
        bank_port = free_port()
        bank = App(
            ROOT / "examples" / "bank_app" / "app.py",
            bank_port,
            {
                "BANK_EXCHANGE": exchange.url,
                "BANK_IDP": f"{exchange.url}/dev-idp",
                "BANK_PAYMENTS": payments.url,
            },
            tmp_path / "bank.log",
        )
        apps.append(bank)
        payments.wait_ready()
        bank.wait_ready()
        shots = tmp_path / "shots"
        shots.mkdir()

        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),  # a fresh --user-data-dir
                executable_path=str(chromium),
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 900, "height": 560},
            )
            try:
                person = Person(context.pages[0] if context.pages else context.new_page(), shots)
                drive(person, bank.url)
            finally:
                context.close()
        assert not any(JWT.search(url) for url in person.urls), "a JWT travelled in a URL"
        decisions = audit(tmp_path / "exchange.db")
        assert decisions == [
            ("denied", "mfa_required"),
            ("granted", None),
            ("denied", "amount_too_high"),
        ]
    finally:
        exchange.stop()
    publish(shots)


def drive(person: Person, bank_url: str) -> None:
    page = person.page
    page.goto(bank_url)
    expect(page.get_by_role("heading", name="Welcome")).to_be_visible()
    page.get_by_role("link", name="Sign in").click()
    person.sees_no_token()
    person.signs_in(second_factor=False)

    expect(page.get_by_role("heading", name="Payments to approve")).to_be_visible()
    expect(page.get_by_text("Signed in as alice (password)")).to_be_visible()
    expect(page.locator("#p-1001")).to_contain_text("250.00 EUR")
    expect(page.locator("#p-1002")).to_contain_text("12,500.00 EUR")
    person.sees_no_token()
    person.shot("payments")

    # Approve without a second factor: the exchange asks for a step-up, the bank says so in words.
    page.get_by_role("button", name="Approve p-1001").click()
    expect(page.get_by_role("status")).to_contain_text("Please confirm with your second factor.")
    expect(page.locator("#p-1001")).not_to_contain_text("Approved")
    person.sees_no_token()
    person.shot("step_up")

    page.get_by_role("link", name="Confirm with your second factor").click()
    expect(
        page.get_by_text("bank-web asks you to sign in again and confirm with your second factor")
    ).to_be_visible()
    person.sees_no_token()
    person.shot("second_factor")
    person.signs_in(second_factor=True)

    expect(page.get_by_text("Signed in as alice (password and second factor)")).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text("Approve the payment once more")
    page.get_by_role("button", name="Approve p-1001").click()
    expect(page.get_by_role("status")).to_have_text("Payment p-1001 to Acme Office Supplies is approved.")
    # "alice" here is what the payments service read from the verified purpose token.
    expect(page.locator("#p-1001")).to_contain_text("Approved by alice")
    person.sees_no_token()
    person.shot("approved")

    # A business rule (amount at most 10000) refuses the other payment, and the person is told why.
    page.get_by_role("button", name="Approve p-1002").click()
    expect(page.get_by_role("status")).to_have_text(
        "Payment p-1002 cannot be approved: amount must be at most 10000."
    )
    expect(page.get_by_role("button", name="Approve p-1002")).to_be_visible()
    person.sees_no_token()
    person.shot("denied")


def audit(db: Path) -> list[tuple[str, str | None]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT decision, denial FROM audit_records WHERE purpose = 'payments.approve' ORDER BY seq"
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


def publish(shots: Path) -> None:
    """Refresh docs/img/ when asked to, or when a screenshot the README shows is missing."""
    refresh = os.environ.get("BANK_APP_SCREENSHOTS") == "1"
    DOCS_IMG.mkdir(exist_ok=True)
    for shot in sorted(shots.glob("bank_app_*.png")):
        target = DOCS_IMG / shot.name
        if refresh or not target.exists():
            shutil.copyfile(shot, target)
