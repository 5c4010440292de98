"""Kie.ai: every endpoint family (jobs API, Veo 3.1, Runway, GPT-4o image, Flux Kontext) as data.

What differs per family — submit and poll endpoints, where the status is and what its values mean,
where results and errors are — lives on the model (``api_endpoint``, ``poll_endpoint``,
``response_mapping``; ``KIE_FAMILIES`` in ``presets`` has them). What all Kie endpoints
share is here: Bearer auth, the ``{"code", "msg" | "message", "data"}`` envelope whose body ``code`` is
authoritative (errors arrive inside HTTP 200), and what each code means.
"""

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from apps.ai_providers.contract import (
    Adapter,
    CallbackRejected,
    Failed,
    PollResult,
    ProviderError,
    Running,
    Submitted,
    Succeeded,
)
from apps.ai_providers.http import retry_after_seconds, send
from apps.ai_providers.mapping import ResponseMapping, dig

# Body codes that no retry will fix, with the words users see.
_FINAL = {
    400: "bad request",
    401: "invalid API key",
    402: "insufficient credits",
    404: "not found",
    413: "request too large",
    422: "request rejected",
    433: "sub-key usage limit reached",
    501: "generation failed",
    505: "feature disabled",
}
# Body codes worth waiting out.
_TRANSIENT = {429: "rate limited", 455: "service under maintenance", 500: "server error", 503: "service unavailable"}
# Kie sometimes reports a validation or billing problem as code 500; these words give it away.
_VALIDATION_WORDS = ("required", "invalid", "not support", "unsupported", "must be", "illegal", "not allowed")
_CREDIT_WORDS = ("credit", "balance")
# Kie's file upload API lives on its own host; ``settings.upload_base_url`` on the provider overrides it.
DEFAULT_UPLOAD_BASE_URL = "https://kieai.redpandaai.co"
# A webhook older than this is refused (replay protection).
CALLBACK_MAX_AGE_SECONDS = 15 * 60


def _message(envelope: dict) -> str:
    return str(envelope.get("msg") or envelope.get("message") or "").strip()


def classify(code: Any, message: str) -> ProviderError:
    """The error for a non-200 body ``code``, e.g. ``Kie.ai: insufficient credits (402): Credits insufficient``."""
    lowered = message.lower()
    if code == 500 and any(word in lowered for word in _CREDIT_WORDS) and "insufficient" in lowered:
        code, retryable, label = 402, False, _FINAL[402]
    elif code == 500 and any(word in lowered for word in _VALIDATION_WORDS):
        retryable, label = False, _FINAL[422]
    elif code in _TRANSIENT:
        retryable, label = True, _TRANSIENT[code]
    elif code in _FINAL:
        retryable, label = False, _FINAL[code]
    else:
        retryable, label = False, "error"
    detail = f": {message}" if message and message.lower() != label else ""
    return ProviderError(f"Kie.ai: {label} ({code}){detail}", retryable=retryable)


class KieAdapter(Adapter):
    label = "Kie.ai"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.provider.api_key}", "Accept": "application/json"}

    @staticmethod
    def _read(response) -> dict | None:
        try:
            envelope = response.json()
        except ValueError:
            return None
        return envelope if isinstance(envelope, dict) and "code" in envelope else None

    def _envelope(self, response, *, what: str, billable: bool = False) -> dict:
        """The JSON envelope with body code 200; anything else raises ``ProviderError``.

        ``billable``: the request may have created a (paid) task, so a 2xx whose body cannot be read is
        ambiguous, never retried.
        """
        envelope = self._read(response)
        if envelope is None and billable and response.is_success:
            raise ProviderError(
                f"Kie.ai: unreadable answer to {what} (HTTP {response.status_code}); the task may exist",
                retryable=False,
                ambiguous=True,
            )
        if envelope is None:
            transient = response.status_code >= 500 or response.status_code in (408, 429) or response.status_code < 300
            snippet = response.text[:120].replace("\n", " ")
            raise ProviderError(
                f"Kie.ai: unreadable answer to {what} (HTTP {response.status_code}): {snippet!r}",
                retryable=transient,
                retry_after=retry_after_seconds(response),
            )
        if envelope["code"] != 200:
            error = classify(envelope["code"], _message(envelope))
            error.retry_after = retry_after_seconds(response)
            raise error
        return envelope

    def submit(self, model, body: dict, *, callback_url: str | None) -> Submitted:
        mapping = ResponseMapping.from_json(model.response_mapping)
        if callback_url and mapping.callback_field:
            body = {**body, mapping.callback_field: callback_url}
        response = send(self.label, "POST", self.url(model.api_endpoint), headers=self._headers(), json=body)
        envelope = self._envelope(response, what="the submission", billable=True)
        task_id = dig(envelope, mapping.task_id_path)
        if not task_id:
            raise ProviderError(
                f"Kie.ai: the submission was accepted but no task id was found at '{mapping.task_id_path}'",
                retryable=False,
                ambiguous=True,
            )
        return Submitted(task_id=str(task_id), callback_expected=bool(callback_url and mapping.callback_field))

    def poll(self, model, task_id: str) -> PollResult:
        mapping = ResponseMapping.from_json(model.response_mapping)
        response = send(
            self.label,
            "GET",
            self.url(model.poll_endpoint),
            headers=self._headers(),
            params={mapping.poll_task_id_param: task_id},
        )
        if response.status_code == 429:
            raise ProviderError("Kie.ai: rate limited (429)", retryable=True, retry_after=retry_after_seconds(response))
        return self._status(mapping, self._envelope(response, what="the status query"))

    @staticmethod
    def _status(mapping: ResponseMapping, envelope: dict) -> PollResult:
        """What a status answer (or a callback, which carries the same ``data``) says of the task."""
        outcome, raw_status = mapping.outcome(envelope)
        if outcome == "succeeded":
            urls = mapping.result_urls(envelope)
            if not urls:
                return Failed("Kie.ai: the task finished but returned no result")
            return Succeeded(result_urls=urls, cost=mapping.cost(envelope))
        if outcome == "failed":
            reason = mapping.error(envelope) or f"status {raw_status}"
            return Failed(f"Kie.ai: generation failed: {reason}")
        return Running(progress=mapping.progress(envelope))

    def check_connection(self) -> str:
        response = send(self.label, "GET", self.url("/api/v1/chat/credit"), headers=self._headers())
        envelope = self._envelope(response, what="the credit query")
        return f"Kie.ai reachable, credits: {envelope.get('data')}"

    def upload_input(self, content, *, filename: str, content_type: str) -> str:
        """``POST /api/file-stream-upload``; Kie keeps the file 3 days and answers ``data.downloadUrl``."""
        base = (self.provider.settings or {}).get("upload_base_url") or DEFAULT_UPLOAD_BASE_URL
        response = send(
            self.label,
            "POST",
            base.rstrip("/") + "/api/file-stream-upload",
            headers=self._headers(),
            data={"uploadPath": "genbox", "fileName": filename},
            files={"file": (filename, content, content_type)},
        )
        envelope = self._envelope(response, what="the file upload")
        url = dig(envelope, "data.downloadUrl")
        if not url:
            raise ProviderError("Kie.ai: the file upload answered without a downloadUrl", retryable=False)
        return str(url)

    def callback_task_id(self, model, headers: dict[str, str], body: bytes) -> str:
        """Kie posts ``{"code", "msg", "data": {"taskId", …}}``; signed when the provider has a webhook key.

        With ``settings.webhook_hmac_key`` on the provider, ``X-Webhook-Signature`` must equal
        base64(HMAC-SHA256(key, taskId + "." + X-Webhook-Timestamp)) and the timestamp be recent.
        """
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise CallbackRejected("body is not JSON") from exc
        mapping = ResponseMapping.from_json(model.response_mapping)
        task_id = dig(payload, mapping.callback_task_id_path or "data.taskId")
        if not task_id:
            raise CallbackRejected("no task id in the callback")
        key = (self.provider.settings or {}).get("webhook_hmac_key")
        if key:
            timestamp = headers.get("X-Webhook-Timestamp", "")
            signature = headers.get("X-Webhook-Signature", "")
            expected = base64.b64encode(
                hmac.new(key.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
            ).decode()
            if not hmac.compare_digest(signature, expected):
                raise CallbackRejected("bad signature")
            if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > CALLBACK_MAX_AGE_SECONDS:
                raise CallbackRejected("stale or missing timestamp")
        return str(task_id)

    def callback_result(self, model, headers: dict[str, str], body: bytes) -> Succeeded | None:
        """A signed callback's result. Kie's signature covers the task id and the time, not the body; the
        callback URL is secret too, and only a success with result URLs is taken (anything else is polled)."""
        if not (self.provider.settings or {}).get("webhook_hmac_key"):
            return None
        try:
            result = self._status(ResponseMapping.from_json(model.response_mapping), json.loads(body))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        return result if isinstance(result, Succeeded) and result.result_urls else None

    def secrets(self) -> list[str]:
        key = (self.provider.settings or {}).get("webhook_hmac_key")
        return super().secrets() + ([key] if key else [])
