"""The Kie.ai emulator, exercised the way clients will use it: over real HTTP with httpx.

No Django: run with ``-p no:django``. Tasks take a fraction of a second, so the whole file stays fast.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import queue
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from apps.assets.media import inspect_media
from sandbox import kie
from sandbox.kie import KieEmulator, make_mp4, make_png, mp4_stream_chunks, parse_directives
from tests.support.media_samples import png_bytes

API_KEY = "test-kie-key"
TASK_SECONDS = 0.15

# family → (submit path, poll path, a minimal valid submit body)
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "jobs": (
        "/api/v1/jobs/createTask",
        "/api/v1/jobs/recordInfo",
        {"model": "google/nano-banana", "input": {"prompt": "a red fox"}},
    ),
    "veo": ("/api/v1/veo/generate", "/api/v1/veo/record-info", {"prompt": "a red fox", "model": "veo3_fast"}),
    "runway": (
        "/api/v1/runway/generate",
        "/api/v1/runway/record-detail",
        {"prompt": "a red fox", "duration": 5, "quality": "720p", "aspectRatio": "16:9"},
    ),
    "gpt4o": ("/api/v1/gpt4o-image/generate", "/api/v1/gpt4o-image/record-info", {"prompt": "a red fox"}),
    "flux": ("/api/v1/flux/kontext/generate", "/api/v1/flux/kontext/record-info", {"prompt": "a red fox"}),
}


def is_terminal(family: str, data: dict[str, Any]) -> bool:
    if family in ("jobs", "runway"):
        return data["state"] in ("success", "fail")
    if family == "gpt4o":
        return data["status"] != "GENERATING"
    return data["successFlag"] != 0


def body_for(family: str, prompt: str | None = None, **extra: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(FAMILIES[family][2]))
    if prompt is not None:
        if family == "jobs":
            body["input"]["prompt"] = prompt
        else:
            body["prompt"] = prompt
    body.update(extra)
    return body


# --------------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def emulator() -> Iterator[KieEmulator]:
    with KieEmulator(api_key=API_KEY, task_seconds=TASK_SECONDS) as running:
        yield running


@pytest.fixture
def client(emulator: KieEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10) as http:
        yield http


def submit(client: httpx.Client, family: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(FAMILIES[family][0], json=body)
    assert response.status_code == 200
    return response.json()


def submit_ok(client: httpx.Client, family: str, body: dict[str, Any]) -> str:
    answer = submit(client, family, body)
    assert answer["code"] == 200, answer
    task_id = answer["data"]["taskId"]
    assert task_id.startswith(f"{family}_")
    return task_id


def poll(client: httpx.Client, family: str, task_id: str) -> httpx.Response:
    return client.get(FAMILIES[family][1], params={"taskId": task_id})


def poll_until_done(client: httpx.Client, family: str, task_id: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Poll until the task is terminal; returns every poll's ``data`` in order."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = poll(client, family, task_id).json()
        assert answer["code"] == 200, answer
        seen.append(answer["data"])
        if is_terminal(family, answer["data"]):
            return seen
        time.sleep(0.02)
    raise AssertionError(f"{task_id} did not finish: {seen[-1]}")


def mp4_video_size(prefix: bytes, total: int) -> tuple[list[bytes], int, int]:
    """Walk the top-level boxes (whose headers must all lie in ``prefix``) of a ``total``-byte MP4.

    Checks the sizes add up exactly to ``total``, that moov holds a trak whose mdia/hdlr is 'vide', and
    returns (top-level box types, tkhd width, tkhd height).
    """

    def children(buffer: bytes) -> Iterator[tuple[bytes, bytes]]:
        position = 0
        while position + 8 <= len(buffer):
            size, kind = struct.unpack_from(">I4s", buffer, position)
            assert 8 <= size <= len(buffer) - position
            yield kind, buffer[position + 8 : position + size]
            position += size

    def child(buffer: bytes, wanted: bytes) -> bytes:
        return next(payload for kind, payload in children(buffer) if kind == wanted)

    types, moov, offset = [], None, 0
    while offset < total:
        size, kind = struct.unpack_from(">I4s", prefix, offset)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", prefix, offset + 8)
            header = 16
        assert size >= header
        types.append(kind)
        if kind == b"moov":
            moov = prefix[offset + header : offset + size]
        offset += size
    assert offset == total, "top-level box sizes must add up to the file size"
    assert moov is not None
    for kind, trak in children(moov):
        if kind == b"trak" and child(child(trak, b"mdia"), b"hdlr")[8:12] == b"vide":
            width, height = struct.unpack(">II", child(trak, b"tkhd")[-8:])
            return types, width >> 16, height >> 16
    raise AssertionError("no video track")


def download(url: str) -> httpx.Response:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == len(response.content)
    return response


class _ReceiverServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 turns bursts of callbacks into 1 s SYN retries


class CallbackReceiver:
    """A tiny HTTP server collecting callbacks as (headers, json, monotonic arrival time)."""

    def __init__(self) -> None:
        self.received: queue.Queue[tuple[dict[str, str], Any, float]] = queue.Queue()
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.put((dict(self.headers.items()), json.loads(body), time.monotonic()))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _ReceiverServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/callback"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def next(self, timeout: float = 3.0) -> tuple[dict[str, str], Any, float]:
        return self.received.get(timeout=timeout)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    running = CallbackReceiver()
    yield running
    running.close()


def expected_signature(key: str, task_id: str, timestamp: str) -> str:
    digest = hmac.new(key.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


# --------------------------------------------------------------------------------------------------
# Families: submit, poll to success, exact shapes, downloadable results
# --------------------------------------------------------------------------------------------------


def test_jobs_image_task_round_trip(emulator: KieEmulator, client: httpx.Client) -> None:
    body = {"model": "google/nano-banana", "input": {"prompt": "a red fox", "aspect_ratio": "16:9"}}
    answer = submit(client, "jobs", body)
    assert answer["code"] == 200 and answer["msg"] == "success"
    task_id = answer["data"]["taskId"]
    assert answer["data"]["recordId"]

    first = poll(client, "jobs", task_id).json()["data"]
    assert first["state"] in ("waiting", "queuing", "generating")
    assert first["resultJson"] == ""
    assert first["failCode"] is None and first["failMsg"] is None
    assert json.loads(first["param"]) == body  # param is a JSON *string* of the request

    final = poll_until_done(client, "jobs", task_id)[-1]
    assert final["state"] == "success"
    assert final["model"] == "google/nano-banana"
    assert isinstance(final["resultJson"], str)
    urls = json.loads(final["resultJson"])["resultUrls"]
    assert len(urls) == 1 and urls[0].startswith(f"{emulator.base_url}/files/{task_id}/")
    assert final["failCode"] in ("", None) and final["failMsg"] in ("", None)
    for key in ("createTime", "updateTime", "completeTime", "costTime"):
        assert isinstance(final[key], int)
    assert final["completeTime"] >= final["createTime"] > 1_600_000_000_000  # milliseconds

    result = download(urls[0])
    assert result.headers["Content-Type"] == "image/png"
    with Image.open(io.BytesIO(result.content)) as picture:
        assert picture.format == "PNG"
        assert picture.width > picture.height  # 16:9

    assert [record.task_id for record in emulator.submissions("jobs")] == [task_id]
    assert emulator.polls_for(task_id) >= 2
    assert emulator.tasks[task_id].state == "success"


def test_jobs_video_model_produces_mp4(client: httpx.Client) -> None:
    body = {"model": "kling/v2-1-text-to-video", "input": {"prompt": "waves", "aspect_ratio": "9:16"}}
    task_id = submit_ok(client, "jobs", body)
    final = poll_until_done(client, "jobs", task_id)[-1]
    (url,) = json.loads(final["resultJson"])["resultUrls"]
    assert url.endswith(".mp4")
    result = download(url)
    assert result.headers["Content-Type"] == "video/mp4"
    types, width, height = mp4_video_size(result.content, len(result.content))
    assert types[0] == b"ftyp" and types.index(b"moov") < types.index(b"mdat")  # moov first: streamable
    assert (width, height) == (720, 1280)


def test_veo_task_round_trip(client: httpx.Client) -> None:
    task_id = submit_ok(client, "veo", body_for("veo", aspect_ratio="16:9"))
    polls = poll_until_done(client, "veo", task_id)
    assert polls[0]["successFlag"] == 0 and polls[0]["response"] is None
    final = polls[-1]
    assert final["successFlag"] == 1
    assert final["errorMessage"] is None
    response = final["response"]
    assert response["resolution"] == "720p"
    assert response["originUrls"] and len(response["resultUrls"]) == 1
    result = download(response["resultUrls"][0])
    _, width, height = mp4_video_size(result.content, len(result.content))
    assert (width, height) == (1280, 720)


def test_runway_task_round_trip(client: httpx.Client) -> None:
    task_id = submit_ok(client, "runway", body_for("runway"))
    polls = poll_until_done(client, "runway", task_id)
    assert {data["state"] for data in polls[:-1]} <= {"wait", "queueing", "generating"}
    assert polls[0]["videoInfo"] is None
    final = polls[-1]
    assert final["state"] == "success"
    video = download(final["videoInfo"]["videoUrl"])
    assert video.headers["Content-Type"] == "video/mp4"
    mp4_video_size(video.content, len(video.content))
    cover = download(final["videoInfo"]["imageUrl"])
    with Image.open(io.BytesIO(cover.content)) as picture:
        assert picture.size == (1280, 720)


def test_gpt4o_task_progress_and_variants(client: httpx.Client) -> None:
    task_id = submit_ok(client, "gpt4o", body_for("gpt4o", size="2:3", nVariants=2))
    polls = poll_until_done(client, "gpt4o", task_id)
    progress = [data["progress"] for data in polls]
    assert all(isinstance(value, str) and len(value) == 4 for value in progress)  # "0.00".."1.00"
    assert [float(value) for value in progress] == sorted(float(value) for value in progress)
    assert polls[0]["status"] == "GENERATING"
    final = polls[-1]
    assert final["status"] == "SUCCESS" and final["progress"] == "1.00"
    urls = final["response"]["resultUrls"]
    assert len(urls) == 2
    with Image.open(io.BytesIO(download(urls[1]).content)) as picture:
        assert picture.width < picture.height  # 2:3


def test_flux_task_round_trip(client: httpx.Client) -> None:
    task_id = submit_ok(client, "flux", body_for("flux", aspectRatio="1:1", outputFormat="png"))
    final = poll_until_done(client, "flux", task_id)[-1]
    assert final["successFlag"] == 1
    url = final["response"]["resultImageUrl"]
    with Image.open(io.BytesIO(download(url).content)) as picture:
        assert picture.format == "PNG" and picture.size == (512, 512)


def test_unknown_task_and_missing_task_id(emulator: KieEmulator, client: httpx.Client) -> None:
    assert poll(client, "jobs", "jobs_nope").json()["code"] == 404
    assert client.get("/api/v1/jobs/recordInfo").json()["code"] == 422
    assert emulator.polls_for("jobs_nope") == 1


def test_credit_and_download_url(client: httpx.Client) -> None:
    credit = client.get("/api/v1/chat/credit").json()
    assert credit == {"code": 200, "msg": "success", "data": 1000.0}
    answer = client.post("/api/v1/common/download-url", json={"url": "https://example.com/x.png"}).json()
    assert answer["code"] == 200 and answer["data"] == "https://example.com/x.png"


# --------------------------------------------------------------------------------------------------
# Uploads and input fetching
# --------------------------------------------------------------------------------------------------


def upload(client: httpx.Client, data: bytes, name: str) -> str:
    answer = client.post(
        "/api/file-stream-upload",
        files={"file": (name, data, "application/octet-stream")},
        data={"uploadPath": "images/tests", "fileName": name},
    ).json()
    assert answer["code"] == 200 and answer["msg"] == "success", answer
    assert answer["data"]["fileName"] == name and answer["data"]["fileSize"] == len(data)
    return answer["data"]["downloadUrl"]


def test_upload_is_served_and_fetched_as_input(emulator: KieEmulator, client: httpx.Client) -> None:
    source = png_bytes(160, 120)
    url = upload(client, source, "fox.png")
    assert httpx.get(url).content == source

    task_id = submit_ok(
        client, "jobs", {"model": "google/nano-banana-edit", "input": {"prompt": "edit", "image_urls": [url]}}
    )
    final = poll_until_done(client, "jobs", task_id)[-1]
    assert final["state"] == "success"
    (fetched,) = emulator.tasks[task_id].inputs
    assert (fetched.url, fetched.status, fetched.content_length, fetched.kind) == (url, 200, len(source), "image")
    # The input picture is pasted in: the result differs from the same prompt rendered without it.
    result = download(json.loads(final["resultJson"])["resultUrls"][0]).content
    assert result != make_png("edit", 512, 512)


@pytest.mark.parametrize(
    ("kind", "message"), [("missing", "Failed to fetch input image: 404"), ("text", "File type not supported")]
)
def test_input_fetch_failure_fails_the_task(
    client: httpx.Client, emulator: KieEmulator, kind: str, message: str
) -> None:
    url = f"{emulator.base_url}/uploads/nothing/here.png" if kind == "missing" else upload(client, b"hello", "a.txt")
    task_id = submit_ok(client, "jobs", {"model": "m/edit", "input": {"prompt": "p", "image_url": url}})
    final = poll_until_done(client, "jobs", task_id)[-1]
    assert final["state"] == "fail" and final["failMsg"] == message


def test_inputs_are_not_fetched_when_disabled(emulator: KieEmulator, client: httpx.Client) -> None:
    emulator.fetch_inputs = False
    task_id = submit_ok(client, "veo", body_for("veo", imageUrls=["http://127.0.0.1:9/unreachable.png"]))
    assert poll_until_done(client, "veo", task_id)[-1]["successFlag"] == 1
    assert emulator.tasks[task_id].inputs == []


# --------------------------------------------------------------------------------------------------
# Auth, envelope quirks, rate limit, validation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key", API_KEY])
def test_api_routes_need_the_bearer_key(emulator: KieEmulator, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.post(f"{emulator.base_url}/api/v1/jobs/createTask", json=body_for("jobs"), headers=headers)
    assert response.status_code == 200  # Kie answers auth errors inside a 200
    assert response.json()["code"] == 401
    assert "access permissions" in response.json()["msg"]
    (record,) = emulator.requests
    assert record.authorized is False
    assert emulator.submissions() == []
    if authorization:
        assert record.headers["Authorization"] == "Bearer <redacted>"


def test_message_key_variants(emulator: KieEmulator, client: httpx.Client) -> None:
    emulator.message_key = "message"
    answer = client.get("/api/v1/chat/credit").json()
    assert answer["message"] == "success" and "msg" not in answer
    emulator.message_key = "alternate"
    keys = [
        next(key for key in client.get("/api/v1/chat/credit").json() if key in ("msg", "message")) for _ in range(4)
    ]
    assert set(keys) == {"msg", "message"} and keys[0] != keys[1]
    with pytest.raises(ValueError):
        emulator.message_key = "text"


def test_rate_limit_rejects_excess_submits_without_queueing(emulator: KieEmulator, client: httpx.Client) -> None:
    emulator.rate_limit, emulator.rate_window_seconds = 3, 0.5
    accepted = [submit_ok(client, "jobs", body_for("jobs")) for _ in range(3)]
    rejected = submit(client, "jobs", body_for("jobs"))
    assert rejected == {"code": 429, "msg": "Rate limited, please try again later", "data": None}
    assert len(emulator.tasks) == 3 and len(emulator.submissions()) == 3
    for task_id in accepted:  # polls are not rate-limited
        assert poll(client, "jobs", task_id).json()["code"] == 200
    time.sleep(0.55)  # the rolling window has passed
    submit_ok(client, "jobs", body_for("jobs"))


@pytest.mark.parametrize(
    ("family", "body", "code", "message"),
    [
        ("jobs", {"input": {"prompt": "p"}}, 422, "model is required"),
        ("jobs", {"model": "m/x", "input": {}}, 422, "prompt is required"),
        ("veo", {"prompt": "p", "model": "veo2"}, 422, None),
        ("gpt4o", {"size": "1:1"}, 422, "prompt is required"),
        ("runway", {"prompt": "p", "duration": 7, "aspectRatio": "16:9"}, 422, None),
        ("runway", {"prompt": "p", "duration": 10, "quality": "1080p", "aspectRatio": "16:9"}, 422, None),
        ("runway", {"prompt": "p", "duration": 5, "quality": "720p"}, 500, "aspectRatio is required"),
    ],
)
def test_validation_errors(
    emulator: KieEmulator, client: httpx.Client, family: str, body: dict[str, Any], code: int, message: str | None
) -> None:
    answer = submit(client, family, body)
    assert answer["code"] == code and answer["data"] is None
    if message:
        assert answer["msg"] == message
    assert emulator.submissions() == [] and emulator.tasks == {}


def test_runway_with_an_image_needs_no_aspect_ratio(emulator: KieEmulator, client: httpx.Client) -> None:
    emulator.fetch_inputs = False
    submit_ok(client, "runway", {"prompt": "p", "duration": 5, "imageUrl": "http://127.0.0.1:9/a.png"})


# --------------------------------------------------------------------------------------------------
# Failure directives
# --------------------------------------------------------------------------------------------------


def test_directives_are_parsed() -> None:
    assert parse_directives("x [[slow:2.5]] [[FAIL]] [[size:1e9]]") == {"slow": "2.5", "fail": None, "size": "1e9"}


@pytest.mark.parametrize(
    ("directive", "code", "message"),
    [
        ("[[credits]]", 402, "Credits insufficient"),
        ("[[credits500]]", 500, "Credits insufficient"),
        ("[[validation]]", 422, "The model does not support this parameter"),
        ("[[maintenance]]", 455, None),
    ],
)
def test_submit_error_directives(
    emulator: KieEmulator, client: httpx.Client, directive: str, code: int, message: str | None
) -> None:
    answer = submit(client, "jobs", body_for("jobs", f"fox {directive}"))
    assert answer["code"] == code
    if message:
        assert answer["msg"] == message
    assert emulator.submissions() == []


def test_submit500_fails_once_with_html(emulator: KieEmulator, client: httpx.Client) -> None:
    body = body_for("veo", "fox [[submit500]]")
    first = client.post(FAMILIES["veo"][0], json=body)
    assert first.status_code == 500 and first.headers["Content-Type"].startswith("text/html")
    with pytest.raises(ValueError):
        first.json()
    submit_ok(client, "veo", body)
    assert len(emulator.submissions("veo")) == 1


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fail_directive(client: httpx.Client, family: str) -> None:
    task_id = submit_ok(client, family, body_for(family, "fox [[fail]]"))
    final = poll_until_done(client, family, task_id)[-1]
    if family == "jobs":
        assert (final["state"], final["failCode"], final["failMsg"]) == ("fail", "500", "Internal generation error")
        assert final["resultJson"] == ""
    elif family in ("veo", "flux"):
        assert final["successFlag"] == 2 and final["errorMessage"] and final["response"] is None
    elif family == "runway":
        assert final["state"] == "fail" and final["failMsg"] and final["videoInfo"] is None
    else:
        assert final["status"] == "GENERATE_FAILED" and final["errorMessage"]


def test_malformed_polls(emulator: KieEmulator, client: httpx.Client) -> None:
    always = submit_ok(client, "jobs", body_for("jobs", "fox [[malformed]]"))
    once = submit_ok(client, "jobs", body_for("jobs", "fox [[malformed-once]]"))
    for _ in range(2):
        response = poll(client, "jobs", always)
        assert response.status_code == 200
        with pytest.raises(ValueError):
            response.json()
    with pytest.raises(ValueError):
        poll(client, "jobs", once).json()
    assert poll(client, "jobs", once).json()["code"] == 200
    assert emulator.polls_for(always) == 2 and emulator.polls_for(once) == 2


def test_429_poll_directive(emulator: KieEmulator, client: httpx.Client) -> None:
    task_id = submit_ok(client, "gpt4o", body_for("gpt4o", "fox [[429poll]]"))
    for _ in range(2):
        response = poll(client, "gpt4o", task_id)
        assert response.status_code == 429 and response.headers["Retry-After"] == "1"
    assert poll(client, "gpt4o", task_id).status_code == 200
    assert emulator.polls_for(task_id) == 3


def result_url_of(client: httpx.Client, family: str, prompt: str) -> str:
    task_id = submit_ok(client, family, body_for(family, prompt))
    final = poll_until_done(client, family, task_id)[-1]
    return json.loads(final["resultJson"])["resultUrls"][0] if family == "jobs" else final["response"]["resultUrls"][0]


@pytest.mark.parametrize("family", ["jobs", "veo"])
def test_truncated_result(client: httpx.Client, family: str) -> None:
    url = result_url_of(client, family, "fox [[truncated]]")
    with httpx.stream("GET", url) as response:
        declared = int(response.headers["Content-Length"])
        assert declared > 0
        with pytest.raises(httpx.RemoteProtocolError):
            response.read()


def test_badresult_serves_html(client: httpx.Client) -> None:
    response = httpx.get(result_url_of(client, "jobs", "fox [[badresult]]"))
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.content.lstrip().lower().startswith(b"<!doctype html")


def test_noresult_succeeds_without_urls(client: httpx.Client) -> None:
    task_id = submit_ok(client, "jobs", body_for("jobs", "fox [[noresult]]"))
    final = poll_until_done(client, "jobs", task_id)[-1]
    assert final["state"] == "success" and json.loads(final["resultJson"]) == {"resultUrls": []}


def test_slow_directive_sets_duration(emulator: KieEmulator, client: httpx.Client) -> None:
    task_id = submit_ok(client, "flux", body_for("flux", "fox [[slow:30]]"))
    assert emulator.tasks[task_id].duration == 30.0
    time.sleep(TASK_SECONDS + 0.05)
    assert poll(client, "flux", task_id).json()["data"]["successFlag"] == 0


# --------------------------------------------------------------------------------------------------
# Callbacks
# --------------------------------------------------------------------------------------------------


def test_jobs_callback_is_signed(emulator: KieEmulator, client: httpx.Client, receiver: CallbackReceiver) -> None:
    emulator.webhook_hmac_key = "hook-secret"
    task_id = submit_ok(client, "jobs", {**body_for("jobs"), "callBackUrl": receiver.url})
    headers, payload, arrived = receiver.next()
    task = emulator.tasks[task_id]
    assert arrived >= task.started + task.duration  # sent once the task ended, not before
    assert payload["code"] == 200
    data = payload["data"]
    assert data["taskId"] == task_id and data["state"] == "success"
    assert json.loads(data["resultJson"])["resultUrls"] == task.result_urls
    assert json.loads(data["param"])["callBackUrl"] == receiver.url
    timestamp = headers["X-Webhook-Timestamp"]
    assert abs(int(timestamp) - time.time()) < 5
    assert hmac.compare_digest(headers["X-Webhook-Signature"], expected_signature("hook-secret", task_id, timestamp))
    deadline = time.monotonic() + 2
    while task.callback_status is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert task.callback_sent and task.callback_status == 200


def test_veo_callback_shape_and_failure_code(
    emulator: KieEmulator, client: httpx.Client, receiver: CallbackReceiver
) -> None:
    ok = submit_ok(client, "veo", body_for("veo", callBackUrl=receiver.url))
    failed = submit_ok(client, "runway", body_for("runway", "fox [[fail]]", callBackUrl=receiver.url))
    payloads = {
        payload["data"]["taskId"]: (headers, payload) for headers, payload, _ in (receiver.next(), receiver.next())
    }
    headers, veo = payloads[ok]
    assert "X-Webhook-Signature" not in headers  # unsigned without a key
    assert veo["code"] == 200 and veo["data"]["info"]["resultUrls"] == emulator.tasks[ok].result_urls
    assert set(veo["data"]["info"]) >= {"resultUrls", "originUrls", "resolution"}
    _, runway = payloads[failed]
    assert runway["code"] == 501 and runway["data"]["state"] == "fail"


def test_nocallback_and_unreachable_callback(emulator: KieEmulator, client: httpx.Client) -> None:
    silent = submit_ok(client, "flux", body_for("flux", "fox [[nocallback]]", callBackUrl="http://127.0.0.1:9/cb"))
    lost = submit_ok(client, "flux", body_for("flux", callBackUrl="http://127.0.0.1:9/cb"))
    deadline = time.monotonic() + 3
    while emulator.tasks[lost].callback_error is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert emulator.tasks[lost].callback_error  # recorded, not retried
    assert [attempt.task_id for attempt in emulator.callbacks] == [lost]
    assert emulator.tasks[silent].callback_sent is False


# --------------------------------------------------------------------------------------------------
# Large, streamed results
# --------------------------------------------------------------------------------------------------


def test_large_video_result_is_streamed(client: httpx.Client) -> None:
    url = result_url_of(client, "veo", "fox [[size:50000000]]")
    tracemalloc.start()
    try:
        received, prefix = 0, b""
        with httpx.stream("GET", url) as response:
            assert response.headers["Content-Type"] == "video/mp4"
            declared = int(response.headers["Content-Length"])
            for chunk in response.iter_bytes():
                if len(prefix) < 65536:
                    prefix += chunk[: 65536 - len(prefix)]
                received += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert declared == received == 50_000_000
    assert peak < 16 * 1024 * 1024  # neither side held the file in memory
    types, width, height = mp4_video_size(prefix, received)
    assert types == [b"ftyp", b"moov", b"mdat"] and (width, height) == (1280, 720)


@pytest.mark.parametrize("total", [None, 10, 1_000_000])
def test_mp4_stream_chunks_add_up_to_the_announced_length(total: int | None) -> None:
    length, chunks = mp4_stream_chunks(640, 360, total)
    head = next(chunks)
    assert mp4_video_size(head, length) == ([b"ftyp", b"moov", b"mdat"], 640, 360)
    assert len(head) + sum(len(chunk) for chunk in chunks) == length


@pytest.mark.parametrize("total", [1_000_000, 6 * 1024**3])
def test_mp4_stream_chunks_announce_the_requested_size(total: int) -> None:
    length, chunks = mp4_stream_chunks(640, 360, total)
    assert length == total
    assert mp4_video_size(next(chunks), length) == ([b"ftyp", b"moov", b"mdat"], 640, 360)


# --------------------------------------------------------------------------------------------------
# Playable sandbox videos
# --------------------------------------------------------------------------------------------------


def decoded_frames(path: Path) -> list[bytes]:
    """Decode every frame of the video at ``path`` with ffmpeg, as 16×16 grey thumbnails.

    Fails the test when ffmpeg reports any error or exits non-zero; skips it without imageio_ffmpeg.
    """
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="imageio-ffmpeg (requirements-dev.txt) is needed")
    completed = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:v:0"]
        + ["-vf", "scale=16:16", "-pix_fmt", "gray", "-f", "rawvideo", "-"],
        capture_output=True,
        timeout=60,
    )
    assert completed.returncode == 0 and completed.stderr == b"", completed.stderr.decode(errors="replace")
    raw = completed.stdout
    assert raw and len(raw) % 256 == 0
    return [raw[offset : offset + 256] for offset in range(0, len(raw), 256)]


@pytest.fixture
def counted_renders(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """Record each ``make_mp4`` call the emulator makes, as (prompt, width, height)."""
    calls: list[tuple[str, int, int]] = []

    def counting(prompt: str, width: int, height: int, *args: Any, **kwargs: Any) -> bytes:
        calls.append((prompt, width, height))
        return make_mp4(prompt, width, height, *args, **kwargs)

    monkeypatch.setattr(kie, "make_mp4", counting)
    return calls


@pytest.mark.parametrize(
    ("family", "body", "size"),
    [
        ("veo", body_for("veo", "waves at dusk", aspect_ratio="16:9"), (1280, 720)),
        (
            "jobs",
            {"model": "kling/v2-1-text-to-video", "input": {"prompt": "waves", "aspect_ratio": "9:16"}},
            (720, 1280),
        ),
    ],
)
def test_video_result_is_a_playable_clip(
    client: httpx.Client,
    counted_renders: list[tuple[str, int, int]],
    tmp_path: Path,
    family: str,
    body: dict[str, Any],
    size: tuple[int, int],
) -> None:
    pytest.importorskip("imageio_ffmpeg", reason="imageio-ffmpeg (requirements-dev.txt) renders playable videos")
    task_id = submit_ok(client, family, body)
    final = poll_until_done(client, family, task_id)[-1]
    url = json.loads(final["resultJson"])["resultUrls"][0] if family == "jobs" else final["response"]["resultUrls"][0]
    video = download(url)  # also checks Content-Length against the body
    assert video.headers["Content-Type"] == "video/mp4"
    assert httpx.head(url).headers["Content-Length"] == str(len(video.content))
    assert download(url).content == video.content
    assert len(counted_renders) == 1  # rendered once, then served from the cache

    path = tmp_path / "result.mp4"
    path.write_bytes(video.content)
    info = inspect_media(path, max_image_side=4096)
    assert (info.asset_type, info.mime_type, info.width, info.height) == ("VIDEO", "video/mp4", *size)
    frames = decoded_frames(path)
    assert len(frames) == 24  # 2 s at 12 fps
    assert frames[0] != frames[-1]  # it moves


def test_concurrent_first_downloads_render_once(
    client: httpx.Client, counted_renders: list[tuple[str, int, int]]
) -> None:
    url = result_url_of(client, "veo", "fox")
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(download(url).content)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and len(set(results)) == 1
    assert len(counted_renders) == 1


def test_make_mp4_sizes_are_even_and_source_is_used(tmp_path: Path) -> None:
    pytest.importorskip("imageio_ffmpeg", reason="imageio-ffmpeg (requirements-dev.txt) renders playable videos")
    plain = make_mp4("fox", 321, 199, seconds=0.5, fps=8)
    assert make_mp4("fox", 321, 199, seconds=0.5, fps=8) == plain  # deterministic
    with_source = make_mp4("fox", 321, 199, png_bytes(160, 120), seconds=0.5, fps=8)
    assert with_source != plain
    for name, data in (("plain.mp4", plain), ("source.mp4", with_source)):
        path = tmp_path / name
        path.write_bytes(data)
        info = inspect_media(path, max_image_side=4096)
        assert (info.asset_type, info.width, info.height) == ("VIDEO", 320, 198)
        assert len(decoded_frames(path)) == 4


def test_make_mp4_with_mpeg4_when_the_build_lacks_libx264(
    monkeypatch: pytest.MonkeyPatch, fresh_ffmpeg_probe: None, tmp_path: Path
) -> None:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="imageio-ffmpeg (requirements-dev.txt) is needed")
    monkeypatch.setattr(kie, "_ffmpeg", lambda: (imageio_ffmpeg.get_ffmpeg_exe(), ("-c:v", "mpeg4", "-q:v", "5")))
    path = tmp_path / "mpeg4.mp4"
    path.write_bytes(make_mp4("fox", 640, 360, seconds=0.5, fps=8))
    info = inspect_media(path, max_image_side=4096)
    assert (info.asset_type, info.mime_type, info.width, info.height) == ("VIDEO", "video/mp4", 640, 360)
    assert len(decoded_frames(path)) == 4


def test_sized_video_result_is_the_streamed_placeholder(
    client: httpx.Client, counted_renders: list[tuple[str, int, int]]
) -> None:
    result = download(result_url_of(client, "veo", "fox [[size:300000]]"))
    assert len(result.content) == 300_000
    assert result.content == b"".join(mp4_stream_chunks(1280, 720, 300_000)[1])
    assert counted_renders == []


@pytest.fixture
def fresh_ffmpeg_probe(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Forget the cached ffmpeg probe and the warnings already logged, before and after the test."""
    probe = kie._ffmpeg  # the test may replace it
    monkeypatch.setattr(kie, "_fallback_warnings", set())
    probe.cache_clear()
    yield
    probe.cache_clear()


def test_make_mp4_without_imageio_ffmpeg_falls_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_ffmpeg_probe: None
) -> None:
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # makes the import fail
    with caplog.at_level(logging.WARNING, logger=kie.__name__):
        first = make_mp4("fox", 640, 360)
        second = make_mp4("fox", 641, 361)
    assert first == second == b"".join(mp4_stream_chunks(640, 360)[1])
    types, width, height = mp4_video_size(first, len(first))
    assert types == [b"ftyp", b"moov", b"mdat"] and (width, height) == (640, 360)
    warnings = [record for record in caplog.records if record.name == kie.__name__]
    assert len(warnings) == 1 and "no usable ffmpeg" in warnings[0].getMessage()


def test_make_mp4_falls_back_when_ffmpeg_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_ffmpeg_probe: None, tmp_path: Path
) -> None:
    broken = tmp_path / "ffmpeg"
    broken.write_text("#!/bin/sh\necho 'boom' >&2\nexit 3\n")
    broken.chmod(0o755)
    monkeypatch.setattr(kie, "_ffmpeg", lambda: (str(broken), ("-c:v", "libx264")))
    with caplog.at_level(logging.WARNING, logger=kie.__name__):
        first = make_mp4("fox", 640, 360)
        make_mp4("fox", 640, 360)
    assert first == b"".join(mp4_stream_chunks(640, 360)[1])
    warnings = [record for record in caplog.records if record.name == kie.__name__]
    assert len(warnings) == 1 and "ffmpeg failed" in warnings[0].getMessage()
    assert "status 3: boom" in warnings[0].getMessage()
