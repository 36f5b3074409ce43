"""The Django variant of the test service (tests/verify/frameworks/apps.py)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from exchange.verify.django import require_purpose, require_txn_token
from tests.verify.conftest import PURPOSE, TXN_SCOPE


@require_purpose(PURPOSE)
def whoami(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"sub": request.purpose_claims.sub})  # type: ignore[attr-defined]


@csrf_exempt
@require_purpose(PURPOSE)
def pay(request: HttpRequest, payment_id: str) -> JsonResponse:
    request.purpose_claims.require_detail(type="payment", payment_id=payment_id)  # type: ignore[attr-defined]
    return JsonResponse({"paid": payment_id})


def open_route(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_txn_token(TXN_SCOPE)
def order(request: HttpRequest) -> JsonResponse:
    from tests.verify.frameworks.txn_apps import seen

    return JsonResponse(seen(request.txn_token))  # type: ignore[attr-defined]


@require_txn_token()
def any_scope(request: HttpRequest) -> JsonResponse:
    from tests.verify.frameworks.txn_apps import seen

    return JsonResponse(seen(request.txn_token))  # type: ignore[attr-defined]


urlpatterns = [
    path("whoami", whoami),
    path("pay/<str:payment_id>", pay),
    path("open", open_route),
    path("order", order),
    path("any", any_scope),
]
