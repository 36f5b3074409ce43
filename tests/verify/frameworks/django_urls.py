"""The Django variant of the test service (tests/verify/frameworks/apps.py)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from exchange.verify.django import require_purpose
from tests.verify.conftest import PURPOSE


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


urlpatterns = [path("whoami", whoami), path("pay/<str:payment_id>", pay), path("open", open_route)]
