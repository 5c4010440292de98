"""API-wide conventions: the one error shape, pagination.

Every error the API returns has the same body::

    {"error": {"code": "invalid", "message": "file: The submitted file is empty.", "details": {...}}}

``message`` is one sentence a person can act on and names the field(s) at fault; ``details`` keeps the
per-field messages for programs (``{"file": ["The submitted file is empty."]}``).
"""

from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class Pagination(PageNumberPagination):
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100


def _leaf_messages(detail: Any, path: str = "") -> list[str]:
    """Flatten DRF's nested error detail into ``field.sub: message`` lines."""
    if isinstance(detail, dict):
        lines = []
        for key, value in detail.items():
            name = "" if key in ("non_field_errors", "detail") else str(key)
            lines += _leaf_messages(value, f"{path}.{name}" if path and name else (name or path))
        return lines
    if isinstance(detail, list):
        lines = []
        for index, value in enumerate(detail):
            # A list of strings is the messages of one field; a list of dicts is per-item errors.
            sub = f"{path}[{index}]" if isinstance(value, dict | list) else path
            lines += _leaf_messages(value, sub)
        return lines
    return [f"{path}: {detail}" if path else str(detail)]


def error_body(*, code: str, message: str, details: Any = None) -> dict:
    return {"error": {"code": code, "message": message, "details": details if details is not None else {}}}


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF exception handler producing the one error shape. Unknown exceptions stay 500s (and get logged).

    Django's ``ValidationError`` (raised by services and model validation) becomes a 400 like DRF's own.
    """
    if isinstance(exc, DjangoValidationError):
        # Services and model validation raise Django's ValidationError; the API answers it as a 400.
        exc = exceptions.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None

    if isinstance(exc, exceptions.ValidationError):
        detail = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        body = error_body(code="invalid", message="; ".join(_leaf_messages(detail)), details=detail)
    else:
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else exc.default_code
        body = error_body(code=code, message=str(exc.detail))
    response.data = body
    return response
