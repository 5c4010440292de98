"""GET /api/health/: is every part Genbox depends on reachable? 200 when all are, 503 otherwise."""

import logging
import time

from django.db import connection
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.assets.storage import check_storage

from .celery import app as celery_app

logger = logging.getLogger(__name__)


def check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def check_broker() -> None:
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=3)


CHECKS = {"database": check_database, "broker": check_broker, "storage": check_storage}

_result = inline_serializer(
    "HealthCheck",
    {"ok": serializers.BooleanField(), "ms": serializers.FloatField(), "error": serializers.CharField(required=False)},
)
_health = inline_serializer(
    "Health",
    {"status": serializers.ChoiceField(choices=["ok", "unavailable"]), "checks": serializers.DictField(child=_result)},
)


class HealthView(APIView):
    """Checks the database, the Celery broker and the file storage. No authentication needed."""

    permission_classes = [AllowAny]
    authentication_classes = []

    @extend_schema(responses={200: _health, 503: OpenApiResponse(_health, description="A part is down.")})
    def get(self, request):
        checks = {}
        for name, check in CHECKS.items():
            started = time.monotonic()
            try:
                check()
                checks[name] = {"ok": True}
            except Exception as exc:  # any failure of a dependency is a health answer, not a 500
                logger.warning("health check %s failed: %s", name, exc)
                checks[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
            checks[name]["ms"] = round((time.monotonic() - started) * 1000, 1)
        healthy = all(result["ok"] for result in checks.values())
        return Response(
            {"status": "ok" if healthy else "unavailable", "checks": checks}, status=200 if healthy else 503
        )
