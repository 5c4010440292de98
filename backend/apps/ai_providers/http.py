"""The one way Genbox talks HTTP to providers: pooled connections, timeouts, errors that say what to do.

Every failure becomes a ``ProviderError`` telling whether a retry may help and whether the request may
already have been acted on (``ambiguous``): a connection that never opened is safe to retry; a timeout
after the body was sent is not, for a request that costs money.
"""

import hashlib
import os
import threading
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import BinaryIO
from urllib.parse import urlsplit

import httpx
from django.utils import timezone

from .contract import ProviderError

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)
_DOWNLOAD_CHUNK = 1024 * 1024

_client: httpx.Client | None = None
_client_pid: int | None = None
_lock = threading.Lock()


def client() -> httpx.Client:
    """A process-wide pooled client, recreated after a fork (Celery's prefork workers)."""
    global _client, _client_pid
    with _lock:
        if _client is None or _client_pid != os.getpid():
            _client = httpx.Client(
                timeout=DEFAULT_TIMEOUT,
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
                follow_redirects=True,
                headers={"User-Agent": "Genbox/0.1"},
            )
            _client_pid = os.getpid()
        return _client


def retry_after_seconds(response: httpx.Response) -> float | None:
    """``Retry-After`` as seconds (it may be a number or an HTTP date); None when absent or unreadable."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - timezone.now()).total_seconds())
    except (TypeError, ValueError):
        return None


def _host(url: str) -> str:
    """``host:port`` of a URL, never with credentials."""
    return urlsplit(url).netloc.rpartition("@")[2]


def send(label: str, method: str, url: str, **kwargs) -> httpx.Response:
    """Send one request; transport failures become ``ProviderError``. HTTP error statuses are returned."""
    host = _host(url)
    try:
        return client().request(method, url, **kwargs)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise ProviderError(
            f"{label}: cannot connect to {host} ({exc.__class__.__name__})", retryable=True, unreachable=True
        ) from exc
    except httpx.PoolTimeout as exc:  # our own connection pool was busy: nothing says the server is down
        raise ProviderError(f"{label}: cannot connect to {host} ({exc.__class__.__name__})", retryable=True) from exc
    except httpx.TimeoutException as exc:
        raise ProviderError(
            f"{label}: no answer from {host} in time ({exc.__class__.__name__})", retryable=True, ambiguous=True
        ) from exc
    except httpx.TransportError as exc:
        raise ProviderError(
            f"{label}: the connection to {host} broke ({exc.__class__.__name__}: {exc})", retryable=True, ambiguous=True
        ) from exc


@dataclass(frozen=True)
class Download:
    content_type: str
    size: int
    sha256: str


def download(
    label: str, url: str, dest: BinaryIO, *, max_bytes: int, headers: dict[str, str] | None = None
) -> Download:
    """Stream ``url`` into ``dest`` (a file on disk), hashing on the way; never holds the body in memory.

    Raises ``ProviderError``: retryable for network trouble, 5xx, 429 and a body cut short; final for
    other HTTP errors and a body over ``max_bytes``.
    """
    host = _host(url)
    digest = hashlib.sha256()
    size = 0
    try:
        with client().stream("GET", url, headers=headers) as response:
            if response.status_code >= 400:
                transient = response.status_code >= 500 or response.status_code in (408, 429)
                raise ProviderError(
                    f"{label}: downloading the result from {host} failed with HTTP {response.status_code}",
                    retryable=transient,
                    retry_after=retry_after_seconds(response),
                )
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise ProviderError(
                    f"{label}: the result is {declared} bytes, over the {max_bytes} limit", retryable=False
                )
            for chunk in response.iter_bytes(_DOWNLOAD_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise ProviderError(f"{label}: the result is over the {max_bytes} byte limit", retryable=False)
                digest.update(chunk)
                dest.write(chunk)
            content_type = response.headers.get("Content-Type", "")
    except httpx.TransportError as exc:
        raise ProviderError(
            f"{label}: downloading the result from {host} was cut off ({exc.__class__.__name__})", retryable=True
        ) from exc
    dest.flush()
    return Download(content_type=content_type.split(";")[0].strip(), size=size, sha256=digest.hexdigest())


def status_error(label: str, response: httpx.Response, detail: str, *, what: str, sent: bool = False) -> ProviderError:
    """The error for an HTTP error status of a local server, e.g. ``ComfyUI: the status query failed (502): …``.

    401/403: the credentials; 408, 429, 502–504: worth waiting out; other statuses are final (a 500 from a
    GPU server is a generation that crashed, and would crash again). ``sent``: the request was a whole
    generation; a 502 or 504 then comes from a proxy that gave up while the server may still be generating,
    so it is ambiguous rather than worth repeating.
    """
    code = response.status_code
    if code in (401, 403):
        reason = "the server refused the credentials; check the provider's API key"
    else:
        reason = f"{what} failed"
    retryable = code in (408, 429, 502, 503, 504)
    suffix = f": {detail}" if detail else ""
    return ProviderError(
        f"{label}: {reason} (HTTP {code}){suffix}",
        retryable=retryable,
        ambiguous=sent and code in (502, 504),
        retry_after=retry_after_seconds(response),
    )


def error_detail(response: httpx.Response) -> str:
    """The readable part of an error body: FastAPI's ``detail`` (a text or a list of field errors), A1111's
    ``error``/``detail``/``errors``, or the start of the text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].replace("\n", " ").strip()
    if not isinstance(body, dict):
        return str(body)[:200]
    detail = body.get("detail")
    if isinstance(detail, list):  # FastAPI / pydantic: [{"loc": ["body", "width"], "msg": "..."}]
        fields = []
        for item in detail:
            if isinstance(item, dict):
                location = [str(part) for part in item.get("loc", []) if part != "body"]
                fields.append(f"{'.'.join(location) or 'body'}: {item.get('msg', '')}")
        return "; ".join(fields)
    error = body.get("error")
    if isinstance(error, dict):
        error = error.get("message")
    parts: list[str] = []
    for part in (error, detail, body.get("errors"), body.get("message")):  # A1111 puts its message in "errors"
        if part and str(part) not in parts:
            parts.append(str(part))
    return ": ".join(parts)
