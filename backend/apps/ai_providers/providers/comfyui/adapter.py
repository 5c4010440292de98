"""ComfyUI: an API-format workflow as the model's ``request_schema``, run through the server's queue.

- The source image (and an inpainting mask) is uploaded through ``/upload/image``; the workflow gets the
  name ComfyUI answers (``<<image_name>>`` / ``<<mask_name>>``), which may differ from the one sent.
- ``POST /prompt`` with a ``prompt_id`` we choose and a client id derived from it; a 400 with
  ``node_errors`` becomes one message naming each node and input. A 200 may carry ``node_errors`` too:
  ComfyUI queued the outputs that passed its validation. When the result node is among them the generation
  goes on; when it is not, it can never come, and the submission fails naming the errors that keep it out
  (only the answer to ``POST /prompt`` names them).
- ``GET /history/{id}`` is the source of truth: ``{}`` while queued or running, then the outputs or the
  ``execution_error``. A prompt identical to the one before is served from ComfyUI's cache: no node runs and
  the history reports the earlier output again, which is the result all the same. While it runs, the
  progress comes from the WebSocket's ``progress`` events of this prompt (by ``prompt_id``: ComfyUI sends
  those of prompts queued without a client id to every socket), read for at most
  ``settings.progress_window_seconds`` (default 1 s; 0 turns it off) per poll.
- The result is the output of the node named by the model's ``response_mapping``
  (``{"output_node": "9"}``), fetched through ``/view``: images, or ``gifs`` / ``videos`` for animations.
- What the server says goes to users without its file paths (``exception_message`` names files of the
  server), and its bare ``500 Internal Server Error`` pages become a sentence.
- Optional Bearer auth with the provider's API key (ComfyUI behind an authenticating proxy).
"""

import json
import logging
import re
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

logger = logging.getLogger(__name__)

OUTPUT_KEYS = ("images", "gifs", "videos")
DEFAULT_PROGRESS_WINDOW_SECONDS = 1.0
# How long a poll waits for an event of the prompt (it is running) before it stops listening.
RUNNING_HINT_SECONDS = 0.2
# An absolute file path (POSIX, or Windows with a drive letter) inside a server's message; not one inside a URL
# or a fraction. Group 1 is its last part.
_SERVER_PATH = re.compile(r"""(?<![\w.:/\\])(?:[A-Za-z]:[\\/]|/)(?:[^\s'"\\/:]+[\\/])+([^\s'"\\/:]*)""")
# What aiohttp answers when a ComfyUI handler raised: no reason, just this page.
_BARE_SERVER_ERROR = "500 Internal Server Error"


def client_id(prompt_id: str) -> str:
    """One WebSocket client id per prompt: ComfyUI sends most events of a prompt only to the client that
    queued it (and keeps one socket per client id)."""
    return f"genbox-{prompt_id}"


def hide_paths(text: str) -> str:
    """``text`` with the server's file paths cut to their file name: ``cannot identify image file
    '/srv/ComfyUI/input/a.png'`` → ``cannot identify image file 'a.png'``. Users need not see the server's
    folders."""
    return _SERVER_PATH.sub(lambda match: match.group(1) or "…", text)


def blocks_output(answer: Any, node: str | None) -> bool:
    """Whether the ``node_errors`` of an answer to ``POST /prompt`` keep ``node`` from running: errors of its
    own, or of a node it depends on (ComfyUI lists the outputs an error stops in ``dependent_outputs``)."""
    node_errors = answer.get("node_errors") if isinstance(answer, dict) else None
    if not isinstance(node_errors, dict) or node is None:
        return False
    return node in node_errors or any(
        isinstance(entry, dict) and node in (entry.get("dependent_outputs") or []) for entry in node_errors.values()
    )


def describe_node_errors(answer: Any, output_node: str | None = None) -> str:
    """``node 3 (KSampler) input 'steps': Value smaller than min (steps, 0 < 1); …`` from an answer to
    ``POST /prompt``; with ``output_node``, only the errors that keep that node from running."""
    if not isinstance(answer, dict):
        return ""
    parts = []
    node_errors = answer.get("node_errors")
    if isinstance(node_errors, dict):
        for node_id, entry in node_errors.items():
            if not isinstance(entry, dict):
                continue
            if output_node is not None and node_id != output_node:
                if output_node not in (entry.get("dependent_outputs") or []):
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
    return hide_paths("; ".join(parts))


def describe_execution_error(messages: Any) -> str:
    """The reason a run failed, from the ``status.messages`` of its history entry."""
    for entry in reversed(messages if isinstance(messages, list) else []):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], dict)):
            continue
        event, data = entry
        where = f"node {data.get('node_id', '?')} ({data.get('node_type', '?')})"
        if event == "execution_error":
            kind = data.get("exception_type", "error")
            text = hide_paths(str(data.get("exception_message", ""))).strip().splitlines()
            message = f"{where} failed: {kind}: {text[0] if text else 'no message'}"
            return out_of_memory_hint(message)
        if event == "execution_interrupted":
            return f"the run was interrupted at {where}"
    return "the run ended with an error and no message"


def answer_detail(response) -> str:
    """What an error answer says, for a message: ComfyUI's bare 500 page (its handler raised) says nothing
    useful, an empty body nothing at all."""
    if response.status_code >= 500 and response.text.lstrip().startswith(_BARE_SERVER_ERROR):
        return "the server's handler crashed on the request (its log has the reason)"
    return hide_paths(error_detail(response)) or "no details given"


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
            raise status_error(self.label, response, answer_detail(response), what="uploading the source image")
        try:
            answer = response.json()
            name = answer["name"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderError(f"{self.label}: the image upload answered without a name", retryable=True) from exc
        subfolder = answer.get("subfolder") or ""
        return {f"{source.role}_name": f"{subfolder}/{name}" if subfolder else name}

    def submit(self, model, body: dict, *, callback_url: str | None) -> Submitted:
        """Queue the workflow. A 200 is an acceptance even with ``node_errors`` (outputs that failed validation
        are left out of the run), unless the result node is one of those left out."""
        prompt_id = str(uuid.uuid4())
        payload = {"prompt": body, "client_id": client_id(prompt_id), "prompt_id": prompt_id}
        response = send(self.label, "POST", self.url("/prompt"), headers=self.bearer_headers(), json=payload)
        if response.status_code == 400:
            try:
                answer = response.json()
            except ValueError:
                answer = None
            reason = describe_node_errors(answer) or answer_detail(response)
            raise ProviderError(f"{self.label} rejected the workflow: {reason}", retryable=False)
        if response.status_code != 200:
            # ComfyUI answers 500 to what its handler crashes on (before queueing): final, not ambiguous.
            raise status_error(self.label, response, answer_detail(response), what="queueing the workflow")
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise ProviderError(
                f"{self.label}: unreadable answer to the submission; the workflow may be queued",
                retryable=False,
                ambiguous=True,
            )
        task_id = str(answer.get("prompt_id") or prompt_id)
        if answer.get("node_errors"):
            node = (model.response_mapping or {}).get("output_node")
            if blocks_output(answer, node):
                self._drop(task_id)
                raise ProviderError(
                    f"{self.label} will not run node {node}, whose output is the result: "
                    f"{describe_node_errors(answer, node)}",
                    retryable=False,
                )
            logger.info(
                "ComfyUI queued prompt %s without outputs that failed validation: %s",
                task_id,
                describe_node_errors(answer),
            )
        return Submitted(task_id=task_id)

    def _drop(self, task_id: str) -> None:
        """Take a prompt whose result will never come out of the queue, so the server does not run the rest of
        it for nothing (too late if it already started: then it simply runs)."""
        try:
            send(self.label, "POST", self.url("/queue"), headers=self.bearer_headers(), json={"delete": [task_id]})
        except ProviderError as error:
            logger.warning("ComfyUI: prompt %s left in the queue: %s", task_id, error.message)

    def poll(self, model, task_id: str) -> PollResult:
        response = self._history(task_id)
        if response.status_code >= 500 and response.status_code not in (502, 503, 504):
            # Asking again costs nothing and cannot run anything twice; GENBOX_POLL_ERROR_LIMIT bounds it.
            raise ProviderError(
                f"{self.label}: the status query failed (HTTP {response.status_code}): {answer_detail(response)}",
                retryable=True,
            )
        if response.status_code != 200:
            raise status_error(self.label, response, answer_detail(response), what="the status query")
        try:
            history = response.json()
        except ValueError as exc:
            snippet = response.text[:80].replace("\n", " ")
            raise ProviderError(
                f"{self.label}: unreadable answer to the status query: {snippet!r}", retryable=True
            ) from exc
        entry = history.get(task_id) if isinstance(history, dict) else None
        if not entry:
            where = self._queue_state(task_id)
            if where == "absent":
                if not self._history_entry(task_id):
                    return Failed(
                        f"{self.label}: the server no longer has this prompt (restarted, or its queue was cleared)"
                    )
                return Running()  # it finished in between: the next poll reads the result
            if where == "pending":
                return Running()  # waiting for its turn: no progress to listen for
            return Running(progress=self._live_progress(task_id, running=where == "running"))
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
            return Running(progress=self._live_progress(task_id, running=False))
        queued = entry.get("prompt")
        if isinstance(queued, list) and len(queued) > 4 and isinstance(queued[4], list) and node not in queued[4]:
            # The server left the node out when it queued the prompt (it failed validation then).
            return Failed(f"{self.label}: the server did not run node {node}: it failed validation when queued")
        produced = ", ".join(sorted(entry.get("outputs") or {})) or "none"
        return Failed(f"{self.label}: the run finished without output from node {node} (nodes with output: {produced})")

    def _history(self, task_id: str):
        return send(self.label, "GET", self.url(f"/history/{task_id}"), headers=self.bearer_headers())

    def _queue_state(self, task_id: str) -> str:
        """Where ComfyUI's queue has the prompt: ``running``, ``pending`` or ``absent``; ``unknown`` when the
        queue cannot be read (then nothing is concluded from it)."""
        response = send(self.label, "GET", self.url("/queue"), headers=self.bearer_headers())
        if response.status_code != 200:
            return "unknown"
        try:
            queue = response.json()
            running = list(queue.get("queue_running") or [])
            pending = list(queue.get("queue_pending") or [])
        except (ValueError, AttributeError, TypeError):
            return "unknown"

        def holds(entries: list) -> bool:
            return any(isinstance(entry, list) and len(entry) > 1 and entry[1] == task_id for entry in entries)

        if holds(running):
            return "running"
        return "pending" if holds(pending) else "absent"

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

    def _live_progress(self, prompt_id: str, *, running: bool) -> float | None:
        """0–1 from the WebSocket's ``progress`` events of this prompt, listening briefly; None when it says
        nothing.

        Only events that carry this ``prompt_id`` count, although the client id is the prompt's own: ComfyUI
        sends ``progress`` / ``progress_state`` / ``execution_interrupted`` of prompts queued without a client
        id to every socket, and greets a client whose prompt runs with ``{"node": …}`` and no prompt id. A
        prompt the queue shows ``running`` is listened to for the whole window; otherwise the poll stops
        unless an event of this prompt comes within ``RUNNING_HINT_SECONDS``.
        """
        window = float((self.provider.settings or {}).get("progress_window_seconds", DEFAULT_PROGRESS_WINDOW_SECONDS))
        if window <= 0:
            return None
        url = self.url("/ws").replace("http", "ws", 1) + f"?clientId={client_id(prompt_id)}"
        progress = None
        try:
            with connect(url, open_timeout=2, close_timeout=1, additional_headers=self.bearer_headers()) as websocket:
                started = time.monotonic()
                deadline = started + (window if running else min(window, RUNNING_HINT_SECONDS))
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        message = websocket.recv(timeout=left)
                    except TimeoutError:
                        break
                    if isinstance(message, bytes):  # preview images
                        continue
                    event = json.loads(message)
                    data = event.get("data") if isinstance(event, dict) else None
                    if not isinstance(data, dict) or data.get("prompt_id") != prompt_id:
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
            raise status_error(self.label, response, answer_detail(response), what="reading /system_stats")
        try:
            stats = response.json()
        except ValueError as exc:
            raise ProviderError(f"{self.label}: /system_stats did not answer JSON", retryable=True) from exc
        version = (stats.get("system") or {}).get("comfyui_version", "?")
        devices = []
        for device in stats.get("devices") or []:
            total = device.get("vram_total") or 0
            free = f"{device.get('vram_free', 0) / 2**30:.1f} of {total / 2**30:.1f} GB"
            if device.get("type") == "cpu":  # ComfyUI reports the RAM as a CPU's memory
                memory = f" (no GPU), {free} RAM free" if total else " (no GPU)"
            else:
                memory = f", {free} free" if total else ""
            devices.append(f"{device.get('name', '?')}{memory}")
        return f"ComfyUI {version} reachable; devices: {'; '.join(devices) or 'none reported'}"
