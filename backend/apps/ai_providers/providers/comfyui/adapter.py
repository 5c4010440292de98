"""ComfyUI: an API-format workflow as the model's ``request_schema``, run through the server's queue.

- The source image (and an inpainting mask) is uploaded through ``/upload/image``; the workflow gets the
  name ComfyUI answers (``<<image_name>>`` / ``<<mask_name>>``), which may differ from the one sent.
- ``POST /prompt`` with a ``prompt_id`` we choose and a client id derived from it; a 400 with
  ``node_errors`` becomes one message naming each node and input.
- ``GET /history/{id}`` is the source of truth: ``{}`` while queued or running, then the outputs or the
  ``execution_error``. While it runs, the progress comes from the WebSocket's ``progress`` events, read for
  at most ``settings.progress_window_seconds`` (default 1 s; 0 turns it off) per poll.
- The result is the output of the node named by the model's ``response_mapping``
  (``{"output_node": "9"}``), fetched through ``/view``: images, or ``gifs`` / ``videos`` for animations.
- Optional Bearer auth with the provider's API key (ComfyUI behind an authenticating proxy).
"""

import json
import time
import uuid
from typing import Any
from urllib.parse import urlencode

from django.core.exceptions import ValidationError
from websockets.exceptions import WebSocketException
from websockets.sync.client import connect

from apps.ai_providers.contract import (
    Adapter,
    Failed,
    PollResult,
    ProviderError,
    Running,
    Source,
    Submitted,
    Succeeded,
    out_of_memory_hint,
)
from apps.ai_providers.http import error_detail, send, status_error

OUTPUT_KEYS = ("images", "gifs", "videos")
DEFAULT_PROGRESS_WINDOW_SECONDS = 1.0
# How long a poll waits for ComfyUI's sign that the prompt is running before it stops listening.
RUNNING_HINT_SECONDS = 0.2


def client_id(prompt_id: str) -> str:
    """One WebSocket client id per prompt: ComfyUI sends a prompt's events only to the client that queued it."""
    return f"genbox-{prompt_id}"


def describe_node_errors(answer: Any) -> str:
    """``node 3 (KSampler) input 'steps': Value smaller than min (steps, 0 < 1); …`` from a 400 answer."""
    if not isinstance(answer, dict):
        return ""
    parts = []
    node_errors = answer.get("node_errors")
    if isinstance(node_errors, dict):
        for node_id, entry in node_errors.items():
            if not isinstance(entry, dict):
                continue
            for error in entry.get("errors") or []:
                if not isinstance(error, dict):
                    continue
                input_name = (error.get("extra_info") or {}).get("input_name")
                where = f"node {node_id} ({entry.get('class_type', '?')})" + (
                    f" input '{input_name}'" if input_name else ""
                )
                detail = f" ({error['details']})" if error.get("details") else ""
                parts.append(f"{where}: {error.get('message', error.get('type', 'invalid'))}{detail}")
    if not parts:
        error = answer.get("error")
        if isinstance(error, dict):
            detail = f" ({error['details']})" if error.get("details") else ""
            parts.append(f"{error.get('message') or error.get('type')}{detail}")
        elif error:
            parts.append(str(error))
    return "; ".join(parts)


def describe_execution_error(messages: Any) -> str:
    """The reason a run failed, from the ``status.messages`` of its history entry."""
    for entry in reversed(messages if isinstance(messages, list) else []):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], dict)):
            continue
        event, data = entry
        where = f"node {data.get('node_id', '?')} ({data.get('node_type', '?')})"
        if event == "execution_error":
            kind = data.get("exception_type", "error")
            text = str(data.get("exception_message", "")).strip().splitlines()
            message = f"{where} failed: {kind}: {text[0] if text else 'no message'}"
            return out_of_memory_hint(message)
        if event == "execution_interrupted":
            return f"the run was interrupted at {where}"
    return "the run ended with an error and no message"


class ComfyUIAdapter(Adapter):
    label = "ComfyUI"

    def download_headers(self) -> dict[str, str]:
        return self.bearer_headers()

    @classmethod
    def validate_response_mapping(cls, value: Any, request_schema: Any) -> None:
        """``{"output_node": "<id of a node in the workflow>"}``: which node's output is the result."""
        if not isinstance(value, dict) or set(value) != {"output_node"}:
            raise ValidationError(
                'For ComfyUI: {"output_node": "<node id>"}, the node of the workflow whose output is the result.'
            )
        node = value["output_node"]
        if not isinstance(request_schema, dict) or not isinstance(node, str) or node not in request_schema:
            nodes = ", ".join(sorted(request_schema)) if isinstance(request_schema, dict) else ""
            raise ValidationError(f"output_node {node!r} is not a node of the workflow (its nodes: {nodes}).")

    def source_variables(self, source: Source) -> dict:
        """Upload to ComfyUI's input folder; the workflow gets the name ComfyUI gives it."""
        with source.open() as content:
            response = send(
                self.label,
                "POST",
                self.url("/upload/image"),
                headers=self.bearer_headers(),
                data={"type": "input", "overwrite": "false"},
                files={"image": (source.filename, content, source.content_type)},
            )
        if response.status_code != 200:
            raise status_error(self.label, response, error_detail(response), what="uploading the source image")
        try:
            answer = response.json()
            name = answer["name"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderError(f"{self.label}: the image upload answered without a name", retryable=True) from exc
        subfolder = answer.get("subfolder") or ""
        return {f"{source.role}_name": f"{subfolder}/{name}" if subfolder else name}

    def submit(self, model, body: dict, *, callback_url: str | None) -> Submitted:
        prompt_id = str(uuid.uuid4())
        payload = {"prompt": body, "client_id": client_id(prompt_id), "prompt_id": prompt_id}
        response = send(self.label, "POST", self.url("/prompt"), headers=self.bearer_headers(), json=payload)
        if response.status_code == 400:
            try:
                answer = response.json()
            except ValueError:
                answer = None
            reason = describe_node_errors(answer) or error_detail(response)
            raise ProviderError(f"{self.label} rejected the workflow: {reason}", retryable=False)
        if response.status_code != 200:
            raise status_error(self.label, response, error_detail(response), what="queueing the workflow")
        try:
            answer = response.json()
        except ValueError as exc:
            raise ProviderError(
                f"{self.label}: unreadable answer to the submission; the workflow may be queued",
                retryable=False,
                ambiguous=True,
            ) from exc
        if answer.get("node_errors"):
            raise ProviderError(
                f"{self.label} rejected the workflow: {describe_node_errors(answer)}", retryable=False, ambiguous=True
            )
        return Submitted(task_id=str(answer.get("prompt_id") or prompt_id))

    def poll(self, model, task_id: str) -> PollResult:
        response = self._history(task_id)
        if response.status_code != 200:
            raise status_error(self.label, response, error_detail(response), what="the status query")
        try:
            history = response.json()
        except ValueError as exc:
            snippet = response.text[:80].replace("\n", " ")
            raise ProviderError(
                f"{self.label}: unreadable answer to the status query: {snippet!r}", retryable=True
            ) from exc
        entry = history.get(task_id) if isinstance(history, dict) else None
        if not entry:
            if not self._in_queue(task_id) and not self._history_entry(task_id):
                return Failed(
                    f"{self.label}: the server no longer has this prompt (restarted, or its queue was cleared)"
                )
            return Running(progress=self._live_progress(task_id))
        if not isinstance(entry, dict) or not isinstance(entry.get("status") or {}, dict):
            raise ProviderError(
                f"{self.label}: the history of prompt {task_id} has an unexpected shape", retryable=True
            )
        status = entry.get("status") or {}
        if status.get("status_str") == "error":
            return Failed(f"{self.label}: {describe_execution_error(status.get('messages'))}")
        node = (model.response_mapping or {}).get("output_node")
        files = self._output_files((entry.get("outputs") or {}).get(node))
        if files:
            return Succeeded(result_urls=[self._view_url(item) for item in files])
        if status.get("completed") is False:
            return Running(progress=self._live_progress(task_id))
        produced = ", ".join(sorted(entry.get("outputs") or {})) or "none"
        return Failed(f"{self.label}: the run finished without output from node {node} (nodes with output: {produced})")

    def _history(self, task_id: str):
        return send(self.label, "GET", self.url(f"/history/{task_id}"), headers=self.bearer_headers())

    def _in_queue(self, task_id: str) -> bool:
        """Whether the prompt is running or waiting in ComfyUI's queue; True when the queue cannot be read."""
        response = send(self.label, "GET", self.url("/queue"), headers=self.bearer_headers())
        try:
            queue = response.json()
            entries = (queue.get("queue_running") or []) + (queue.get("queue_pending") or [])
        except (ValueError, AttributeError, TypeError):
            return True
        return any(isinstance(entry, list) and len(entry) > 1 and entry[1] == task_id for entry in entries)

    def _history_entry(self, task_id: str) -> bool:
        """Asked again after the queue: a prompt that finished in between is in the history now."""
        response = self._history(task_id)
        try:
            return bool(response.json().get(task_id))
        except (ValueError, AttributeError):
            return True  # unreadable: do not conclude the prompt is gone

    @staticmethod
    def _output_files(output: Any) -> list[dict]:
        if not isinstance(output, dict):
            return []
        for key in OUTPUT_KEYS:
            files = [item for item in output.get(key) or [] if isinstance(item, dict) and item.get("filename")]
            if files:
                return files
        return []

    def _view_url(self, item: dict) -> str:
        query = {
            "filename": item["filename"],
            "subfolder": item.get("subfolder", ""),
            "type": item.get("type", "output"),
        }
        return self.url("/view") + "?" + urlencode(query)

    def _live_progress(self, prompt_id: str) -> float | None:
        """0–1 from the WebSocket's ``progress`` events, listening briefly; None when it says nothing.

        The client id is this prompt's own, so whatever the socket carries is about it. ComfyUI greets a
        client whose prompt is running with the node it is executing; without that greeting within
        ``RUNNING_HINT_SECONDS`` the prompt is still queued, and the poll does not wait out the window.
        """
        window = float((self.provider.settings or {}).get("progress_window_seconds", DEFAULT_PROGRESS_WINDOW_SECONDS))
        if window <= 0:
            return None
        url = self.url("/ws").replace("http", "ws", 1) + f"?clientId={client_id(prompt_id)}"
        progress = None
        try:
            with connect(url, open_timeout=2, close_timeout=1, additional_headers=self.bearer_headers()) as websocket:
                started = time.monotonic()
                deadline = started + min(window, RUNNING_HINT_SECONDS)
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        message = websocket.recv(timeout=left)
                    except TimeoutError:
                        break
                    if isinstance(message, bytes):  # preview images
                        continue
                    event = json.loads(message)
                    data = event.get("data") or {}
                    if event.get("type") == "status" or data.get("prompt_id") not in (None, prompt_id):
                        continue
                    deadline = started + window  # it is running: worth listening for progress
                    if event.get("type") == "progress" and data.get("max"):
                        progress = min(1.0, max(0.0, data["value"] / data["max"]))
                    elif event.get("type") == "execution_success":
                        return 1.0
        except (OSError, WebSocketException, ValueError, TypeError, AttributeError):
            return progress  # the WebSocket is a nicety; /history decides
        return progress

    def check_connection(self) -> str:
        response = send(self.label, "GET", self.url("/system_stats"), headers=self.bearer_headers(), timeout=10.0)
        if response.status_code != 200:
            raise status_error(self.label, response, error_detail(response), what="reading /system_stats")
        try:
            stats = response.json()
        except ValueError as exc:
            raise ProviderError(f"{self.label}: /system_stats did not answer JSON", retryable=True) from exc
        version = (stats.get("system") or {}).get("comfyui_version", "?")
        devices = []
        for device in stats.get("devices") or []:
            total = device.get("vram_total") or 0
            memory = f", {device.get('vram_free', 0) / 2**30:.1f} of {total / 2**30:.1f} GB free" if total else ""
            devices.append(f"{device.get('name', '?')}{memory}")
        return f"ComfyUI {version} reachable; devices: {'; '.join(devices) or 'none reported'}"
