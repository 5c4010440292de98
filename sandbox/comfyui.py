"""ComfyUI protocol emulator: a real HTTP + WebSocket server speaking ComfyUI's API, validation errors included.

The wire protocol is the one described in ``/work/shared/protocols.md`` section 2. Like the Kie emulator it
exists so that clients, workers and the sandbox can run end to end without a GPU; it is built on
``LocalEmulator`` (``local.py``) and uses only the standard library and Pillow (plus ``make_mp4``'s optional
ffmpeg). No Django.

Contract, in short:

* ``ComfyUIEmulator(...).start()`` serves in the background; ``base_url`` is then ``http://host:port``.
  Every route is also served under ``/api/…``. With ``api_key`` set, every route (``/ws`` included) needs
  ``Authorization: Bearer <key>`` (as behind an auth proxy), else 401 ``{"error": "Unauthorized"}``.
* ``POST /prompt`` validates the API-format graph against a small node catalogue (``NODE_TYPES``, served by
  ``GET /object_info``) the way ComfyUI does: ``invalid_prompt``, ``missing_node_type``,
  ``prompt_no_outputs`` and ``prompt_outputs_failed_validation`` with per-node ``node_errors``
  (``required_input_missing``, ``value_not_in_list``, ``value_smaller_than_min``, ``value_bigger_than_max``,
  ``invalid_input_type``, ``bad_linked_input``, ``return_type_mismatch``). As in ComfyUI, a graph whose
  outputs are only partly valid is accepted and runs the valid outputs, with the errors in ``node_errors``.
* Accepted prompts queue FIFO (``"front": true`` jumps ahead) and ONE executor thread runs them one at a
  time, like one GPU. Execution really evaluates the graph: loaders give markers, ``LoadImage`` /
  ``ImageScale`` / ``ImageInvert`` / ``ImageBlur`` / ``EmptyImage`` work on real pixels (Pillow), a
  ``KSampler`` → ``VAEDecode`` chain draws ``make_png(<positive text> seed <seed>, w, h, source)`` where the
  source is the encoded picture of an img2img chain. Latent sizes are cropped to multiples of 8 (as the
  VAE does). Outputs are kept in memory: ``SaveImage`` → ``<prefix>_<counter:05d>_.png`` (``images``),
  ``PreviewImage`` → the temp folder, ``VHS_VideoCombine`` → ``<prefix>_<counter:05d>.mp4`` (``gifs``, via
  ``make_mp4``), ``SaveAnimatedWEBP`` → an animated ``.webp``.
* A prompt takes ``task_seconds`` (or ``[[slow:S]]``); KSampler-bearing prompts emit ``progress`` events
  (at most 8 per sampler, ``max`` = steps) while they run.
* WebSocket ``/ws?clientId=<id>``: ``status`` (with ``sid``) on connect, then every event of prompts whose
  ``client_id`` is ``id``: ``execution_start``, ``execution_cached``, ``executing`` per node, ``progress``,
  ``executed``, ``execution_success`` / ``execution_error`` / ``execution_interrupted``, then ``executing``
  with ``node: null``. Queue changes broadcast ``status`` to every socket, as ComfyUI does. History is
  written before the terminal events are sent.
* ``GET /history[/{id}]``, ``GET /view``, ``POST /upload/image``, ``GET|POST /queue``, ``POST /interrupt``,
  ``GET /system_stats``, ``GET /object_info[/{class}]``, ``GET /prompt`` (queue info), ``POST /history``.
* Failure modes are driven by directives found in any string input of the graph, e.g. ``[[fail]]`` in the
  prompt text (``DIRECTIVES``): ``[[fail]]`` / ``[[oom]]`` end in ``execution_error`` at the KSampler (or
  first) node, ``[[malformed]]`` truncates ``GET /history/{id}`` once finished, ``[[slow:S]]`` sets the
  duration, ``[[nows]]`` silences the WebSocket for that prompt.
* ``reset()`` forgets everything (queue, prompts, history, files, requests) without restarting the server.

Everything is recorded for tests: ``requests`` (base), ``prompts`` (``EmulatedPrompt`` by id), ``history``,
``inputs`` / ``outputs`` (in-memory folders, ``{"sub/name": bytes}``) and ``submitted_graphs()``.
"""

from __future__ import annotations

import copy
import heapq
import io
import itertools
import json
import logging
import math
import mimetypes
import os
import platform
import re
import sys
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageFilter, ImageOps
from PIL.PngImagePlugin import PngInfo

from .kie import make_mp4, make_png, parse_directives
from .server import LocalEmulator, Reply, Request, WebSocket, slow_seconds

logger = logging.getLogger(__name__)

__all__ = [
    "DIRECTIVES",
    "NODE_TYPES",
    "ComfyUIEmulator",
    "EmulatedPrompt",
    "NodeType",
]

COMFYUI_VERSION = "0.3.60"

DIRECTIVES = {
    "fail": "execution_error at the KSampler (or the first executed) node: RuntimeError 'Emulated failure'",
    "oom": "execution_error at the KSampler (or first) node: torch.OutOfMemoryError 'Allocation on device 0 …'",
    "malformed": "once the prompt finished, GET /history/{id} answers HTTP 200 with a truncated JSON body",
    "slow:S": "the prompt takes S seconds (float) instead of task_seconds",
    "nows": "no WebSocket events for the prompt (its history is still filled)",
}

FAILURE_MESSAGE = "Emulated failure"
OOM_MESSAGE = (
    "Allocation on device 0 would exceed allowed memory. (out of memory)\n"
    "Currently allocated : 7.80 GiB\n"
    "Requested : 1.00 GiB\n"
    "Device limit : 8.00 GiB\n"
    "Free (according to CUDA): 0 bytes\n"
    "PyTorch limit (set by user-supplied memory fraction)\n"
    " : 17179869184.00 GiB"
)
_OOM_TYPE = "torch.OutOfMemoryError"

FOLDER_TYPES = ("input", "output", "temp")
MAX_RESOLUTION = 16384
_MAX_PIXELS = 64 * 1024 * 1024  # a bigger batch "runs out of GPU memory"
_MAX_VIDEO_FRAMES = 240
_PROGRESS_EVENTS = 8
_HISTORY_LIMIT = 10000

# --------------------------------------------------------------------------------------------------
# Node catalogue
# --------------------------------------------------------------------------------------------------

CHECKPOINTS = ["sd_xl_base_1.0.safetensors", "v1-5-pruned-emaonly.safetensors"]
UNETS = ["flux1-dev-fp8.safetensors", "flux1-dev.safetensors", "flux1-schnell.safetensors"]
WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]
CLIPS = ["t5xxl_fp8_e4m3fn.safetensors", "t5xxl_fp16.safetensors", "clip_l.safetensors"]
CLIP_TYPES = ["flux", "sdxl", "sd3"]
VAES = ["ae.safetensors", "sdxl_vae.safetensors"]
SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "ddim", "uni_pc"]
SCHEDULERS = ["normal", "karras", "exponential", "simple", "sgm_uniform", "beta"]
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CROP_METHODS = ["disabled", "center"]
_INPUT_FILES = "__input_files__"  # LoadImage's combo: the uploaded files, checked at validation time


def _int(default: int, low: int, high: int) -> tuple[str, dict[str, Any]]:
    return ("INT", {"default": default, "min": low, "max": high})


def _float(default: float, low: float, high: float) -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": default, "min": low, "max": high})


def _string(default: str = "", multiline: bool = False) -> tuple[str, dict[str, Any]]:
    return ("STRING", {"default": default, "multiline": multiline})


def _combo(options: list[str]) -> tuple[list[str], dict[str, Any]]:
    return (options, {})


def _link(kind: str) -> tuple[str, dict[str, Any]]:
    return (kind, {})


@dataclass(frozen=True)
class NodeType:
    """One node class as ``/object_info`` describes it: inputs ``{name: (type or options, config)}``."""

    name: str
    category: str
    required: dict[str, tuple[Any, dict[str, Any]]]
    outputs: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    optional: dict[str, tuple[Any, dict[str, Any]]] = field(default_factory=dict)
    output_node: bool = False


_NODE_LIST = [
    NodeType(
        "CheckpointLoaderSimple",
        "loaders",
        {"ckpt_name": _combo(CHECKPOINTS)},
        ("MODEL", "CLIP", "VAE"),
        ("MODEL", "CLIP", "VAE"),
    ),
    NodeType(
        "UNETLoader",
        "advanced/loaders",
        {"unet_name": _combo(UNETS), "weight_dtype": _combo(WEIGHT_DTYPES)},
        ("MODEL",),
        ("MODEL",),
    ),
    NodeType(
        "DualCLIPLoader",
        "advanced/loaders",
        {"clip_name1": _combo(CLIPS), "clip_name2": _combo(CLIPS), "type": _combo(CLIP_TYPES)},
        ("CLIP",),
        ("CLIP",),
        optional={"device": _combo(["default", "cpu"])},
    ),
    NodeType("VAELoader", "loaders", {"vae_name": _combo(VAES)}, ("VAE",), ("VAE",)),
    NodeType(
        "CLIPTextEncode",
        "conditioning",
        {"text": _string(multiline=True), "clip": _link("CLIP")},
        ("CONDITIONING",),
        ("CONDITIONING",),
    ),
    NodeType(
        "FluxGuidance",
        "advanced/conditioning/flux",
        {"conditioning": _link("CONDITIONING"), "guidance": _float(3.5, 0.0, 100.0)},
        ("CONDITIONING",),
        ("CONDITIONING",),
    ),
    NodeType(
        "EmptyLatentImage",
        "latent",
        {
            "width": _int(512, 16, MAX_RESOLUTION),
            "height": _int(512, 16, MAX_RESOLUTION),
            "batch_size": _int(1, 1, 4096),
        },
        ("LATENT",),
        ("LATENT",),
    ),
    NodeType(
        "EmptySD3LatentImage",
        "latent/sd3",
        {
            "width": _int(1024, 16, MAX_RESOLUTION),
            "height": _int(1024, 16, MAX_RESOLUTION),
            "batch_size": _int(1, 1, 4096),
        },
        ("LATENT",),
        ("LATENT",),
    ),
    NodeType(
        "LoadImage",
        "image",
        {"image": (_INPUT_FILES, {"image_upload": True})},
        ("IMAGE", "MASK"),
        ("IMAGE", "MASK"),
    ),
    NodeType("VAEEncode", "latent", {"pixels": _link("IMAGE"), "vae": _link("VAE")}, ("LATENT",), ("LATENT",)),
    NodeType("VAEDecode", "latent", {"samples": _link("LATENT"), "vae": _link("VAE")}, ("IMAGE",), ("IMAGE",)),
    NodeType(
        "KSampler",
        "sampling",
        {
            "model": _link("MODEL"),
            "seed": _int(0, 0, 2**64 - 1),
            "steps": _int(20, 1, 10000),
            "cfg": _float(8.0, 0.0, 100.0),
            "sampler_name": _combo(SAMPLERS),
            "scheduler": _combo(SCHEDULERS),
            "positive": _link("CONDITIONING"),
            "negative": _link("CONDITIONING"),
            "latent_image": _link("LATENT"),
            "denoise": _float(1.0, 0.0, 1.0),
        },
        ("LATENT",),
        ("LATENT",),
    ),
    NodeType(
        "SaveImage",
        "image",
        {"images": _link("IMAGE"), "filename_prefix": _string("ComfyUI")},
        output_node=True,
    ),
    NodeType("PreviewImage", "image", {"images": _link("IMAGE")}, output_node=True),
    NodeType(
        "ImageScale",
        "image/upscaling",
        {
            "image": _link("IMAGE"),
            "upscale_method": _combo(UPSCALE_METHODS),
            "width": _int(512, 0, MAX_RESOLUTION),
            "height": _int(512, 0, MAX_RESOLUTION),
            "crop": _combo(CROP_METHODS),
        },
        ("IMAGE",),
        ("IMAGE",),
    ),
    NodeType("ImageInvert", "image", {"image": _link("IMAGE")}, ("IMAGE",), ("IMAGE",)),
    NodeType(
        "EmptyImage",
        "image",
        {
            "width": _int(512, 1, MAX_RESOLUTION),
            "height": _int(512, 1, MAX_RESOLUTION),
            "batch_size": _int(1, 1, 4096),
            "color": _int(0, 0, 0xFFFFFF),
        },
        ("IMAGE",),
        ("IMAGE",),
    ),
    NodeType(
        "ImageBlur",
        "image/postprocessing",
        {"image": _link("IMAGE"), "blur_radius": _int(1, 1, 31), "sigma": _float(1.0, 0.1, 10.0)},
        ("IMAGE",),
        ("IMAGE",),
    ),
    NodeType(
        "VHS_VideoCombine",
        "Video Helper Suite 🎥🅥🅗🅢",
        {
            "images": _link("IMAGE"),
            "frame_rate": _float(8.0, 1.0, 120.0),
            "filename_prefix": _string("AnimateDiff"),
            "format": _string("video/h264-mp4"),
        },
        ("VHS_FILENAMES",),
        ("Filenames",),
        optional={
            "loop_count": _int(0, 0, 100),
            "pingpong": ("BOOLEAN", {"default": False}),
            "save_output": ("BOOLEAN", {"default": True}),
        },
        output_node=True,
    ),
    NodeType(
        "SaveAnimatedWEBP",
        "image/animation",
        {
            "images": _link("IMAGE"),
            "filename_prefix": _string("ComfyUI"),
            "fps": _float(6.0, 0.01, 1000.0),
            "lossless": ("BOOLEAN", {"default": True}),
            "quality": _int(80, 0, 100),
            "method": _combo(["default", "fastest", "slowest"]),
        },
        output_node=True,
    ),
]
NODE_TYPES: dict[str, NodeType] = {node.name: node for node in _NODE_LIST}
_WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")

# --------------------------------------------------------------------------------------------------
# Recorded state
# --------------------------------------------------------------------------------------------------


@dataclass
class EmulatedPrompt:
    """One accepted prompt. ``state``: queued → running → success | error (interrupted ones end in error,
    with ``interrupted`` set); ``deleted`` when removed from the queue before running.

    ``messages`` are the history's ``status.messages`` (``[event, data]``); ``events`` every WebSocket
    event of the prompt as ``(type, data)``, recorded even under ``[[nows]]``.
    """

    prompt_id: str
    number: int
    graph: dict[str, Any]
    client_id: str | None
    extra_data: dict[str, Any]
    outputs_to_execute: list[str]
    node_errors: dict[str, Any]
    directives: dict[str, str | None]
    order: list[str]
    inputs: dict[str, dict[str, Any]]
    state: str = "queued"
    interrupted: bool = False
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    messages: list[list[Any]] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    created: float = 0.0
    started: float | None = None
    finished: float | None = None

    @property
    def queue_item(self) -> list[Any]:
        return [self.number, self.prompt_id, self.graph, self.extra_data, list(self.outputs_to_execute)]


@dataclass
class _Images:
    frames: list[Image.Image]
    text: str = "ComfyUI"

    def __str__(self) -> str:
        first = self.frames[0]
        return f"<IMAGE {len(self.frames)}x{first.height}x{first.width}x3>"


@dataclass
class _Latent:
    width: int
    height: int
    batch: int
    text: str | None = None  # set by a sampler: what VAEDecode draws
    sources: list[Image.Image] | None = None  # encoded pictures (img2img)

    def __str__(self) -> str:
        return f"<LATENT {self.batch}x4x{self.height // 8}x{self.width // 8}>"


@dataclass
class _Conditioning:
    text: str

    def __str__(self) -> str:
        return f"<CONDITIONING {self.text[:40]!r}>"


class _Interrupted(Exception):
    pass


class _NodeFailure(Exception):
    def __init__(self, exception_type: str, message: str):
        super().__init__(message)
        self.exception_type = exception_type
        self.message = message


def _now_ms() -> int:
    return int(time.time() * 1000)


def _type_name(exc: BaseException) -> str:
    if isinstance(exc, _NodeFailure):
        return exc.exception_type
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _split_path(*pieces: str) -> list[str] | None:
    """Path segments of ``pieces`` joined, or None when they try to leave the folder."""
    parts: list[str] = []
    for piece in pieces:
        if not piece:
            continue
        if "\\" in piece or piece.startswith("/") or re.match(r"^[A-Za-z]:", piece):
            return None
        for part in piece.split("/"):
            if part == "..":
                return None
            if part and part != ".":
                parts.append(part)
    return parts


_ANNOTATION_RE = re.compile(r"^(.*?)\s*\[(input|output|temp)\]$")


def _annotated(name: str, default_type: str) -> tuple[str, str]:
    match = _ANNOTATION_RE.match(name)
    return (match.group(1), match.group(2)) if match else (name, default_type)


def _png(image: Image.Image, info: PngInfo | None = None) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1, pnginfo=info)
    return buffer.getvalue()


def _natural(node_id: str) -> tuple[int, int | str]:
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)


def _guard_pixels(width: int, height: int, batch: int) -> None:
    if width * height * batch > _MAX_PIXELS:
        raise _NodeFailure(_OOM_TYPE, OOM_MESSAGE)


_RESAMPLE = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def _scale(frame: Image.Image, width: int, height: int, method: str, crop: str) -> Image.Image:
    if crop == "center":
        old_aspect = frame.width / frame.height
        new_aspect = width / height
        left = top = 0
        if old_aspect > new_aspect:
            left = round((frame.width - frame.width * new_aspect / old_aspect) / 2)
        elif old_aspect < new_aspect:
            top = round((frame.height - frame.height * old_aspect / new_aspect) / 2)
        frame = frame.crop((left, top, frame.width - left, frame.height - top))
    return frame.resize((width, height), _RESAMPLE.get(method, Image.Resampling.BILINEAR))


def _crop8(frame: Image.Image) -> Image.Image:
    """Centre-crop to multiples of 8, as ComfyUI does before VAE encoding."""
    width, height = frame.width // 8 * 8, frame.height // 8 * 8
    if (width, height) == frame.size:
        return frame
    left, top = (frame.width % 8) // 2, (frame.height % 8) // 2
    return frame.crop((left, top, left + width, top + height))


# --------------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------------


class ComfyUIEmulator(LocalEmulator):
    """ComfyUI over real HTTP and WebSocket; see the module docstring for the contract."""

    server_version = "Python/3.11 aiohttp/3.12.15"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        public_base_url: str | None = None,
        task_seconds: float = 0.5,
        api_key: str | None = None,
    ):
        super().__init__(host=host, port=port, public_base_url=public_base_url)
        self.task_seconds = task_seconds
        self.api_key = api_key
        self.prompts: dict[str, EmulatedPrompt] = {}
        self.history: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.files: dict[str, dict[str, bytes]] = {kind: {} for kind in FOLDER_TYPES}
        self.inputs = self.files["input"]
        self.outputs = self.files["output"]
        self._accepted: list[EmulatedPrompt] = []
        self._pending: list[tuple[int, int, EmulatedPrompt]] = []
        self._sequence = itertools.count()
        self._number = 0
        self._running: EmulatedPrompt | None = None
        self._current_node: str | None = None
        self._queue_cv = threading.Condition(self.lock)
        self._interrupt = threading.Event()
        self._stopping = False
        self._executor: threading.Thread | None = None
        self._sockets: dict[str, list[WebSocket]] = {}
        self._ws_lock = threading.Lock()  # serialises sends so every socket sees events in order

    # ---- life cycle ---------------------------------------------------------------------------------

    def start(self):
        super().start()
        with self.lock:
            self._stopping = False
        self._executor = threading.Thread(target=self._executor_loop, name="ComfyUIEmulator-executor", daemon=True)
        self._executor.start()
        return self

    def on_stop(self) -> None:
        with self._queue_cv:
            self._stopping = True
            self._interrupt.set()
            self._queue_cv.notify_all()
        if self._executor is not None:
            self._executor.join(timeout=5)
            self._executor = None

    def reset(self, timeout: float = 5.0) -> None:
        """Start afresh without restarting the server: drop the queue, interrupt the running prompt, then forget
        prompts, history, files and recorded requests (open WebSockets stay connected)."""
        with self._queue_cv:
            for _, _, prompt in self._pending:
                prompt.state = "deleted"
            self._pending.clear()
            if self._running is not None:
                self._interrupt.set()
        deadline = time.monotonic() + timeout
        while self._running is not None and time.monotonic() < deadline:
            time.sleep(0.005)
        with self.lock:
            self.prompts.clear()
            self.history.clear()
            self._accepted.clear()
            self._number = 0
            for files in self.files.values():
                files.clear()
            self.requests.clear()
        self._broadcast_status()

    # ---- queries for tests --------------------------------------------------------------------------

    def submitted_graphs(self) -> list[dict[str, Any]]:
        """The graphs of accepted prompts, in submission order."""
        with self.lock:
            return [prompt.graph for prompt in self._accepted]

    def queue_remaining(self) -> int:
        with self.lock:
            return len(self._pending) + (1 if self._running is not None else 0)

    # ---- HTTP ---------------------------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        return not self.api_key or request.authorization == f"Bearer {self.api_key}"

    @staticmethod
    def _route_path(path: str) -> str:
        if path == "/api" or path.startswith("/api/"):
            path = path[4:] or "/"
        return path.rstrip("/") or "/"

    def accepts_websocket(self, request: Request) -> bool:
        return self._route_path(request.path) == "/ws" and self._authorized(request)

    def handle(self, request: Request) -> Reply:
        if not self._authorized(request):
            return Reply.json({"error": "Unauthorized"}, status=401)
        path = self._route_path(request.path)
        method = "GET" if request.method == "HEAD" else request.method
        routes = {
            ("POST", "/prompt"): self._post_prompt,
            ("GET", "/prompt"): self._get_prompt,
            ("GET", "/history"): self._get_history,
            ("POST", "/history"): self._post_history,
            ("GET", "/view"): self._get_view,
            ("POST", "/upload/image"): self._post_upload,
            ("GET", "/queue"): self._get_queue,
            ("POST", "/queue"): self._post_queue,
            ("POST", "/interrupt"): self._post_interrupt,
            ("GET", "/system_stats"): self._get_system_stats,
            ("GET", "/object_info"): self._get_object_info,
            ("GET", "/ws"): lambda _request: Reply.json({"error": "WebSocket upgrade expected"}, status=400),
            ("GET", "/"): lambda _request: Reply.text("<html><body>ComfyUI emulator</body></html>", 200, "text/html"),
        }
        handler = routes.get((method, path))
        if handler is not None:
            return handler(request)
        if method == "GET" and path.startswith("/history/"):
            return self._get_history_item(path[len("/history/") :])
        if method == "GET" and path.startswith("/object_info/"):
            return self._get_object_info(request, path[len("/object_info/") :])
        if any(route_path == path for _, route_path in routes):
            return Reply.json({"error": "Method Not Allowed"}, status=405)
        return Reply.json({"error": "Not Found"}, status=404)

    @staticmethod
    def _body_json(request: Request) -> Any:
        if request.json is not None:
            return request.json
        if not request.body:
            return None
        try:
            return json.loads(request.body)
        except ValueError:
            return None

    # ---- POST /prompt and validation ----------------------------------------------------------------

    def _post_prompt(self, request: Request) -> Reply:
        body = self._body_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), dict):
            return _invalid_prompt("No prompt provided" if isinstance(body, dict) else "Invalid JSON body")
        graph = copy.deepcopy(body["prompt"])
        prompt_id = body.get("prompt_id")
        if prompt_id is not None and (not isinstance(prompt_id, str) or not prompt_id):
            return _invalid_prompt("prompt_id must be a non-empty string")
        client_id = body.get("client_id")
        if client_id is not None and not isinstance(client_id, str):
            client_id = str(client_id)
        extra_data = dict(body["extra_data"]) if isinstance(body.get("extra_data"), dict) else {}
        if client_id is not None:
            extra_data["client_id"] = client_id

        error, good_outputs, node_errors, inputs = self._validate(graph)
        if error is not None:
            return Reply.json({"error": error, "node_errors": node_errors}, status=400)

        strings = [
            value for node in graph.values() for value in (node.get("inputs") or {}).values() if isinstance(value, str)
        ]
        with self._queue_cv:
            number = self._number
            self._number += 1
            if body.get("front"):
                number = -number
            prompt = EmulatedPrompt(
                prompt_id=prompt_id or str(uuid.uuid4()),
                number=number,
                graph=graph,
                client_id=client_id,
                extra_data=extra_data,
                outputs_to_execute=good_outputs,
                node_errors=node_errors,
                directives=parse_directives(" ".join(strings)),
                order=_execution_order(inputs, good_outputs),
                inputs=inputs,
                created=time.time(),
            )
            self.prompts[prompt.prompt_id] = prompt
            self._accepted.append(prompt)
            heapq.heappush(self._pending, (number, next(self._sequence), prompt))
            self._queue_cv.notify_all()
        self._broadcast_status()
        return Reply.json({"prompt_id": prompt.prompt_id, "number": number, "node_errors": node_errors})

    def _validate(
        self, graph: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, list[str], dict[str, Any], dict[str, dict[str, Any]]]:
        """``(error or None, valid output ids, node_errors, converted inputs by node)``."""
        outputs: list[str] = []
        for node_id, node in graph.items():
            if not isinstance(node, dict) or "class_type" not in node:
                message = "Cannot execute because a node is missing the class_type property."
                return _error("invalid_prompt", message, f"Node ID '#{node_id}'"), [], {}, {}
            class_type = node["class_type"]
            if not isinstance(class_type, str) or class_type not in NODE_TYPES:
                message = f"Cannot execute because node {class_type} does not exist."
                extra = {"node_id": node_id, "class_type": class_type, "node_title": class_type}
                return _error("missing_node_type", message, f"Node ID '#{node_id}'", extra), [], {}, {}
            if node.get("inputs") is not None and not isinstance(node["inputs"], dict):
                message = "Cannot execute because a node has malformed inputs."
                return _error("invalid_prompt", message, f"Node ID '#{node_id}'"), [], {}, {}
            if NODE_TYPES[class_type].output_node:
                outputs.append(node_id)
        if not outputs:
            return _error("prompt_no_outputs", "Prompt has no outputs"), [], {}, {}

        validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}
        converted: dict[str, dict[str, Any]] = {}
        good: list[str] = []
        own_errors: list[dict[str, Any]] = []
        node_errors: dict[str, Any] = {}
        for output in sorted(outputs, key=_natural):
            if self._validate_node(graph, output, validated, converted, set()):
                good.append(output)
                continue
            own_errors += validated[output][1]
            for node_id in _ancestors(graph, output):
                valid, reasons = validated.get(node_id, (True, []))
                if valid or not reasons:
                    continue  # downstream of a failing node: invalid, but without errors of its own
                entry = node_errors.setdefault(
                    node_id,
                    {"errors": reasons, "dependent_outputs": [], "class_type": graph[node_id]["class_type"]},
                )
                entry["dependent_outputs"].append(output)
        if not good:
            details = "\n".join(f"{reason['message']}: {reason['details']}" for reason in own_errors)
            error = _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details)
            return error, [], node_errors, {}
        return None, good, node_errors, converted

    def _validate_node(
        self,
        graph: dict[str, Any],
        node_id: str,
        validated: dict[str, tuple[bool, list[dict[str, Any]]]],
        converted: dict[str, dict[str, Any]],
        visiting: set[str],
    ) -> bool:
        if node_id in validated:
            return validated[node_id][0]
        node = graph[node_id]
        node_type = NODE_TYPES[node["class_type"]]
        given = node.get("inputs") or {}
        errors: list[dict[str, Any]] = []
        valid = True
        values: dict[str, Any] = {}
        visiting.add(node_id)
        specs = [(name, spec, True) for name, spec in node_type.required.items()]
        specs += [(name, spec, False) for name, spec in node_type.optional.items()]
        for name, (kind, config), required in specs:
            if name not in given:
                if required:
                    errors.append(
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": name,
                            "extra_info": {"input_name": name},
                        }
                    )
                continue
            value = given[name]
            if isinstance(value, list):
                problem = self._check_link(graph, name, kind, value)
                if problem is not None:
                    errors.append(problem)
                    continue
                target = value[0]
                if target in visiting:
                    errors.append(
                        {
                            "type": "dependency_cycle",
                            "message": "Dependency cycle detected",
                            "details": f"{name}, node '{target}' depends on node '{node_id}'",
                            "extra_info": {"input_name": name, "linked_node": value},
                        }
                    )
                    continue
                if not self._validate_node(graph, target, validated, converted, visiting):
                    valid = False
                values[name] = (target, value[1])
                continue
            if isinstance(value, dict) and "__value__" in value:
                value = value["__value__"]
            problem, value = self._check_value(name, kind, config, value)
            if problem is not None:
                errors.append(problem)
                continue
            values[name] = value
        visiting.discard(node_id)
        ok = valid and not errors
        validated[node_id] = (ok, errors)
        converted[node_id] = values
        return ok

    @staticmethod
    def _check_link(graph: dict[str, Any], name: str, kind: Any, value: list[Any]) -> dict[str, Any] | None:
        extra = {"input_name": name, "received_value": value}
        if len(value) != 2 or not isinstance(value[1], int) or isinstance(value[1], bool):
            return {
                "type": "bad_linked_input",
                "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                "details": name,
                "extra_info": extra,
            }
        target, slot = value
        if not isinstance(target, str) or target not in graph:
            return {
                "type": "bad_linked_input",
                "message": "Bad linked input, the linked node does not exist",
                "details": f"{name}, node '{target}' not found",
                "extra_info": extra,
            }
        returns = NODE_TYPES[graph[target]["class_type"]].outputs
        if not 0 <= slot < len(returns):
            return {
                "type": "bad_linked_input",
                "message": "Bad linked input, the linked node has no such output",
                "details": f"{name}, output {slot} of node '{target}' ({len(returns)} outputs)",
                "extra_info": extra,
            }
        received = returns[slot]
        expected = "COMBO" if isinstance(kind, list) or kind == _INPUT_FILES else kind
        if received != expected and "*" not in (received, expected):
            return {
                "type": "return_type_mismatch",
                "message": "Return type mismatch between linked nodes",
                "details": f"{name}, received_type({received}) mismatch input_type({expected})",
                "extra_info": {**extra, "linked_node": value},
            }
        return None

    def _check_value(self, name: str, kind: Any, config: dict[str, Any], value: Any) -> tuple[dict | None, Any]:
        extra = {"input_name": name, "input_config": config or None, "received_value": value}
        if kind == _INPUT_FILES:
            if isinstance(value, str) and self._find_file(value, "input") is not None:
                return None, value
            return {
                "type": "value_not_in_list",
                "message": "Value not in list",
                "details": f"{name} - Invalid image file: {value}",
                "extra_info": extra,
            }, value
        if isinstance(kind, list):
            if isinstance(value, str) and value in kind:
                return None, value
            return {
                "type": "value_not_in_list",
                "message": "Value not in list",
                "details": f"{name}: '{value}' not in {kind}",
                "extra_info": {**extra, "input_config": [kind, config]},
            }, value
        reason = None
        if kind == "INT" and (not isinstance(value, int) or isinstance(value, bool)):
            reason = "an integer is required"
        elif kind == "FLOAT":
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                reason = "a finite number is required"
        elif kind == "STRING":
            if isinstance(value, int | float) and not isinstance(value, bool):
                value = str(value)
            elif not isinstance(value, str):
                reason = "a string is required"
        elif kind == "BOOLEAN" and not isinstance(value, bool):
            reason = "true or false is required"
        if reason is not None:
            return {
                "type": "invalid_input_type",
                "message": f"Failed to convert an input value to a {kind} value",
                "details": f"{name}, {value!r}, {reason}",
                "extra_info": extra,
            }, value
        if "min" in config and value < config["min"]:
            return {
                "type": "value_smaller_than_min",
                "message": f"Value {value} smaller than min of {config['min']}",
                "details": f"{name}, {value} < {config['min']}",
                "extra_info": extra,
            }, value
        if "max" in config and value > config["max"]:
            return {
                "type": "value_bigger_than_max",
                "message": f"Value {value} bigger than max of {config['max']}",
                "details": f"{name}, {value} > {config['max']}",
                "extra_info": extra,
            }, value
        return None, value

    # ---- other routes -------------------------------------------------------------------------------

    def _get_prompt(self, request: Request) -> Reply:
        return Reply.json({"exec_info": {"queue_remaining": self.queue_remaining()}})

    def _get_history(self, request: Request) -> Reply:
        try:
            max_items = int(request.query["max_items"]) if request.query.get("max_items") else None
            offset = int(request.query.get("offset") or -1)
        except ValueError:
            return Reply.json({"error": "max_items and offset must be integers"}, status=400)
        with self.lock:
            items = list(self.history.items())
            if offset < 0 and max_items is not None:
                offset = len(items) - max_items
            items = items[max(0, offset) :]
            if max_items is not None:
                items = items[:max_items]
            return Reply.json(copy.deepcopy(dict(items)))

    def _get_history_item(self, prompt_id: str) -> Reply:
        with self.lock:
            entry = self.history.get(prompt_id)
            prompt = self.prompts.get(prompt_id)
            body = json.dumps({prompt_id: entry} if entry is not None else {}).encode()
        if entry is not None and prompt is not None and "malformed" in prompt.directives:
            return Reply(status=200, body=body[: len(body) // 2])
        return Reply(status=200, body=body)

    def _post_history(self, request: Request) -> Reply:
        body = self._body_json(request)
        with self.lock:
            if isinstance(body, dict) and body.get("clear"):
                self.history.clear()
            if isinstance(body, dict) and isinstance(body.get("delete"), list):
                for prompt_id in body["delete"]:
                    self.history.pop(str(prompt_id), None)
        return Reply(status=200, content_type="application/octet-stream")

    def _find_file(self, name: str, folder: str, subfolder: str = "") -> tuple[str, str] | None:
        """``(folder type, key)`` of a stored file named like ComfyUI does (``sub/x.png``, ``x.png [output]``)."""
        name, folder = _annotated(name, folder)
        parts = _split_path(subfolder, name)
        if not parts or folder not in self.files:
            return None
        key = "/".join(parts)
        with self.lock:
            return (folder, key) if key in self.files[folder] else None

    def _get_view(self, request: Request) -> Reply:
        filename = request.query.get("filename", "")
        if not filename:
            return Reply.json({"error": "filename is required"}, status=400)
        filename, folder = _annotated(filename, request.query.get("type") or "output")
        if folder not in FOLDER_TYPES:
            return Reply.json({"error": f"invalid type {folder!r}"}, status=400)
        parts = _split_path(request.query.get("subfolder", ""), filename)
        if parts is None:
            return Reply.json({"error": "path escapes the folder"}, status=403)
        key = "/".join(parts)
        with self.lock:
            data = self.files[folder].get(key)
        if data is None:
            return Reply.json({"error": "Not Found"}, status=404)
        content_type = mimetypes.guess_type(parts[-1])[0] or "application/octet-stream"
        return Reply(
            status=200, body=data, content_type=content_type, headers={"Content-Disposition": f'filename="{parts[-1]}"'}
        )

    def _post_upload(self, request: Request) -> Reply:
        image = request.files.get("image")
        if image is None or not image.filename:
            return Reply.json({"error": "an 'image' file part is required"}, status=400)
        folder = request.form.get("type") or "input"
        if folder not in FOLDER_TYPES:
            return Reply.json({"error": f"invalid type {folder!r}"}, status=400)
        subfolder = request.form.get("subfolder", "")
        filename = image.filename
        if "/" in filename or filename in (".", ".."):
            return Reply.json({"error": "invalid filename"}, status=400)
        folder_parts = _split_path(subfolder)
        if folder_parts is None or _split_path(filename) is None:
            return Reply.json({"error": "path escapes the folder"}, status=400)
        overwrite = request.form.get("overwrite") in ("true", "1")
        stem, ext = os.path.splitext(filename)
        with self.lock:
            files = self.files[folder]
            key = "/".join([*folder_parts, filename])
            if not overwrite:
                for number in itertools.count(1):
                    if key not in files or files[key] == image.content:
                        break
                    filename = f"{stem} ({number}){ext}"
                    key = "/".join([*folder_parts, filename])
            files[key] = image.content
        return Reply.json({"name": filename, "subfolder": subfolder, "type": folder})

    def _get_queue(self, request: Request) -> Reply:
        with self.lock:
            running = [self._running.queue_item] if self._running is not None else []
            pending = [prompt.queue_item for _, _, prompt in sorted(self._pending)]
            return Reply.json(copy.deepcopy({"queue_running": running, "queue_pending": pending}))

    def _post_queue(self, request: Request) -> Reply:
        body = self._body_json(request)
        if not isinstance(body, dict):
            body = {}
        with self.lock:
            doomed = set()
            if body.get("clear"):
                doomed = {prompt.prompt_id for _, _, prompt in self._pending}
            if isinstance(body.get("delete"), list):
                doomed |= {str(prompt_id) for prompt_id in body["delete"]}
            kept = []
            for entry in self._pending:
                if entry[2].prompt_id in doomed:
                    entry[2].state = "deleted"
                else:
                    kept.append(entry)
            changed = len(kept) != len(self._pending)
            heapq.heapify(kept)
            self._pending = kept
        if changed:
            self._broadcast_status()
        return Reply(status=200, content_type="application/octet-stream")

    def _post_interrupt(self, request: Request) -> Reply:
        body = self._body_json(request)
        wanted = body.get("prompt_id") if isinstance(body, dict) else None
        with self.lock:
            if self._running is not None and (wanted is None or wanted == self._running.prompt_id):
                self._interrupt.set()
        return Reply(status=200, content_type="application/octet-stream")

    def _get_system_stats(self, request: Request) -> Reply:
        try:
            page = os.sysconf("SC_PAGE_SIZE")
            ram_total = os.sysconf("SC_PHYS_PAGES") * page
            ram_free = os.sysconf("SC_AVPHYS_PAGES") * page
        except (ValueError, OSError, AttributeError):
            ram_total = ram_free = 0
        return Reply.json(
            {
                "system": {
                    "os": os.name,
                    "python_version": sys.version,
                    "comfyui_version": COMFYUI_VERSION,
                    "embedded_python": False,
                    "pytorch_version": "2.8.0+cpu",
                    "argv": ["main.py", "--cpu"],
                    "ram_total": ram_total,
                    "ram_free": ram_free,
                    "platform": platform.platform(),
                },
                "devices": [
                    {
                        "name": "cpu",
                        "type": "cpu",
                        "index": None,
                        "vram_total": 0,
                        "vram_free": 0,
                        "torch_vram_total": 0,
                        "torch_vram_free": 0,
                    }
                ],
            }
        )

    def _get_object_info(self, request: Request, class_type: str | None = None) -> Reply:
        if class_type is not None:
            node_type = NODE_TYPES.get(class_type)
            return Reply.json({class_type: self._describe(node_type)} if node_type else {})
        return Reply.json({name: self._describe(node_type) for name, node_type in NODE_TYPES.items()})

    def _describe(self, node_type: NodeType) -> dict[str, Any]:
        def render(inputs: dict[str, tuple[Any, dict[str, Any]]]) -> dict[str, Any]:
            rendered = {}
            for name, (kind, config) in inputs.items():
                if kind == _INPUT_FILES:
                    with self.lock:
                        kind = sorted(key for key in self.inputs if "/" not in key)
                rendered[name] = [kind, config] if config else [kind]
            return rendered

        described_inputs = {"required": render(node_type.required)}
        if node_type.optional:
            described_inputs["optional"] = render(node_type.optional)
        return {
            "input": described_inputs,
            "input_order": {section: list(values) for section, values in described_inputs.items()},
            "output": list(node_type.outputs),
            "output_is_list": [False] * len(node_type.outputs),
            "output_name": list(node_type.output_names),
            "name": node_type.name,
            "display_name": node_type.name,
            "description": "",
            "python_module": "custom_nodes.ComfyUI-VideoHelperSuite" if node_type.name.startswith("VHS_") else "nodes",
            "category": node_type.category,
            "output_node": node_type.output_node,
        }

    # ---- WebSocket ----------------------------------------------------------------------------------

    def handle_websocket(self, request: Request, websocket: WebSocket) -> None:
        sid = request.query.get("clientId") or uuid.uuid4().hex
        # Registered and greeted under the send lock: no event can overtake the greeting.
        with self._ws_lock:
            with self.lock:
                self._sockets.setdefault(sid, []).append(websocket)
                running, node = self._running, self._current_node
            websocket.send_json(
                {
                    "type": "status",
                    "data": {"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}, "sid": sid},
                }
            )
            if (
                running is not None
                and node is not None
                and running.client_id == sid
                and "nows" not in running.directives
            ):
                websocket.send_json(
                    {"type": "executing", "data": {"node": node, "display_node": node, "prompt_id": running.prompt_id}}
                )
        try:
            websocket.wait_closed()
        finally:
            with self.lock:
                sockets = self._sockets.get(sid, [])
                if websocket in sockets:
                    sockets.remove(websocket)
                if not sockets:
                    self._sockets.pop(sid, None)

    def _send(self, sockets: list[WebSocket], message: dict[str, Any]) -> None:
        for websocket in sockets:
            if not websocket.send_json(message):
                with self.lock:
                    for sid, registered in list(self._sockets.items()):
                        if websocket in registered:
                            registered.remove(websocket)
                            if not registered:
                                del self._sockets[sid]

    def _emit(self, prompt: EmulatedPrompt, event: str, data: dict[str, Any]) -> None:
        with self.lock:
            prompt.events.append((event, data))
        if prompt.client_id is None or "nows" in prompt.directives:
            return
        with self._ws_lock:
            with self.lock:
                sockets = list(self._sockets.get(prompt.client_id, []))
            self._send(sockets, {"type": event, "data": data})

    def _broadcast_status(self) -> None:
        message = {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}}}
        with self._ws_lock:
            with self.lock:
                sockets = [websocket for registered in self._sockets.values() for websocket in registered]
            self._send(sockets, message)

    # ---- execution ----------------------------------------------------------------------------------

    def _executor_loop(self) -> None:
        while True:
            with self._queue_cv:
                while not self._stopping and not self._pending:
                    self._queue_cv.wait()
                if self._stopping:
                    return
                prompt = heapq.heappop(self._pending)[2]
                prompt.state = "running"
                prompt.started = time.time()
                self._running = prompt
                self._interrupt.clear()
            try:
                self._execute(prompt)
            except Exception:  # noqa: BLE001 - a bug in the emulator must not kill the executor
                logger.exception("ComfyUI emulator: executing prompt %s failed", prompt.prompt_id)
                with self.lock:
                    if prompt.state == "running":
                        prompt.state = "error"
            finally:
                with self.lock:
                    self._running = None
                    self._current_node = None

    def _message(self, prompt: EmulatedPrompt, event: str, data: dict[str, Any], *, send: bool = True) -> None:
        """A message that also goes into the history's ``status.messages``, as ComfyUI's ``add_message``."""
        data = {**data, "timestamp": _now_ms()}
        with self.lock:
            prompt.messages.append([event, data])
        if send:
            self._emit(prompt, event, data)

    def _pause(self, seconds: float) -> None:
        if self._interrupt.wait(max(0.0, seconds)):
            raise _Interrupted()

    def _execute(self, prompt: EmulatedPrompt) -> None:
        directives = prompt.directives
        slow = slow_seconds(directives)
        duration = self.task_seconds if slow is None else slow
        graph, order = prompt.graph, prompt.order
        samplers = [node_id for node_id in order if graph[node_id]["class_type"] == "KSampler"]
        if samplers:
            sampler_share = duration * 0.8 / len(samplers)
            other_share = duration * 0.2 / max(1, len(order) - len(samplers))
        else:
            sampler_share = other_share = duration / max(1, len(order))
        failure = next((kind for kind in ("oom", "fail") if kind in directives), None)
        failing_node = (samplers or order)[0] if failure else None

        self._message(prompt, "execution_start", {"prompt_id": prompt.prompt_id})
        self._message(prompt, "execution_cached", {"nodes": [], "prompt_id": prompt.prompt_id})
        values: dict[str, tuple[Any, ...]] = {}
        executed: list[str] = []
        node_id = order[0]
        outcome: tuple[str, dict[str, Any]]
        try:
            for node_id in order:
                if self._interrupt.is_set():
                    raise _Interrupted()
                class_type = graph[node_id]["class_type"]
                with self.lock:
                    self._current_node = node_id
                self._emit(
                    prompt, "executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt.prompt_id}
                )
                if node_id == failing_node:
                    self._pause((sampler_share if class_type == "KSampler" else other_share) / 2)
                    if failure == "oom":
                        raise _NodeFailure(_OOM_TYPE, OOM_MESSAGE)
                    raise _NodeFailure("RuntimeError", FAILURE_MESSAGE)
                if class_type == "KSampler":
                    steps = prompt.inputs[node_id]["steps"]
                    count = max(1, min(steps, _PROGRESS_EVENTS))
                    for index in range(1, count + 1):
                        self._pause(sampler_share / count)
                        self._emit(
                            prompt,
                            "progress",
                            {
                                "value": round(steps * index / count),
                                "max": steps,
                                "prompt_id": prompt.prompt_id,
                                "node": node_id,
                            },
                        )
                else:
                    self._pause(other_share)
                inputs = {
                    name: values[value[0]][value[1]] if isinstance(value, tuple) else value
                    for name, value in prompt.inputs[node_id].items()
                }
                result = self._run_node(prompt, class_type, inputs)
                if NODE_TYPES[class_type].output_node:
                    ui = result
                    values[node_id] = (ui,) * len(NODE_TYPES[class_type].outputs)
                    with self.lock:
                        prompt.outputs[node_id] = ui
                    self._emit(
                        prompt,
                        "executed",
                        {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": prompt.prompt_id},
                    )
                else:
                    values[node_id] = result
                executed.append(node_id)
            outcome = ("execution_success", {"prompt_id": prompt.prompt_id})
        except _Interrupted:
            outcome = (
                "execution_interrupted",
                {
                    "prompt_id": prompt.prompt_id,
                    "node_id": node_id,
                    "node_type": graph[node_id]["class_type"],
                    "executed": list(executed),
                },
            )
        except Exception as exc:  # noqa: BLE001 - any failure of a node is reported like ComfyUI does
            current_inputs = {
                name: [_format_value(values, value)] for name, value in prompt.inputs.get(node_id, {}).items()
            }
            outcome = (
                "execution_error",
                {
                    "prompt_id": prompt.prompt_id,
                    "node_id": node_id,
                    "node_type": graph[node_id]["class_type"],
                    "executed": list(executed),
                    "exception_message": exc.message if isinstance(exc, _NodeFailure) else str(exc),
                    "exception_type": _type_name(exc),
                    "traceback": _fake_traceback(graph[node_id]["class_type"], exc),
                    "current_inputs": current_inputs,
                    "current_outputs": list(executed),
                },
            )
        self._finish(prompt, *outcome)

    def _finish(self, prompt: EmulatedPrompt, event: str, data: dict[str, Any]) -> None:
        self._message(prompt, event, data, send=False)
        success = event == "execution_success"
        with self.lock:
            prompt.state = "success" if success else "error"
            prompt.interrupted = event == "execution_interrupted"
            prompt.error = None if success else prompt.messages[-1][1]
            prompt.finished = time.time()
            self.history[prompt.prompt_id] = {
                "prompt": prompt.queue_item,
                "outputs": copy.deepcopy(prompt.outputs),
                "status": {
                    "status_str": "success" if success else "error",
                    "completed": success,
                    "messages": copy.deepcopy(prompt.messages),
                },
                "meta": {
                    node_id: {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id}
                    for node_id in prompt.outputs
                },
            }
            while len(self.history) > _HISTORY_LIMIT:
                self.history.popitem(last=False)
            self._running = None
            self._current_node = None
        self._emit(prompt, event, prompt.messages[-1][1])
        self._broadcast_status()
        self._emit(prompt, "executing", {"node": None, "prompt_id": prompt.prompt_id})

    # ---- nodes --------------------------------------------------------------------------------------

    def _run_node(self, prompt: EmulatedPrompt, class_type: str, inputs: dict[str, Any]) -> Any:
        """The node's outputs (a tuple), or for an output node its ``ui`` dict."""
        if class_type == "CheckpointLoaderSimple":
            name = inputs["ckpt_name"]
            return (f"<MODEL {name}>", f"<CLIP {name}>", f"<VAE {name}>")
        if class_type == "UNETLoader":
            return (f"<MODEL {inputs['unet_name']}>",)
        if class_type == "DualCLIPLoader":
            return (f"<CLIP {inputs['clip_name1']}+{inputs['clip_name2']}>",)
        if class_type == "VAELoader":
            return (f"<VAE {inputs['vae_name']}>",)
        if class_type == "CLIPTextEncode":
            return (_Conditioning(inputs["text"]),)
        if class_type == "FluxGuidance":
            return (inputs["conditioning"],)
        if class_type in ("EmptyLatentImage", "EmptySD3LatentImage"):
            width, height, batch = inputs["width"] // 8 * 8, inputs["height"] // 8 * 8, inputs["batch_size"]
            _guard_pixels(width, height, batch)
            return (_Latent(width, height, batch),)
        if class_type == "LoadImage":
            found = self._find_file(inputs["image"], "input")
            if found is None:
                raise FileNotFoundError(f"Invalid image file: {inputs['image']}")
            with self.lock:
                data = self.files[found[0]][found[1]]
            with Image.open(io.BytesIO(data)) as opened:
                frame = ImageOps.exif_transpose(opened).convert("RGB")
            mask = f"<MASK 1x{frame.height}x{frame.width}>"
            return (_Images([frame]), mask)
        if class_type == "VAEEncode":
            images: _Images = inputs["pixels"]
            frames = [_crop8(frame) for frame in images.frames]
            return (_Latent(frames[0].width, frames[0].height, len(frames), sources=frames),)
        if class_type == "KSampler":
            latent: _Latent = inputs["latent_image"]
            text = f"{inputs['positive'].text} seed {inputs['seed']}"
            return (_Latent(latent.width, latent.height, latent.batch, text=text, sources=latent.sources),)
        if class_type == "VAEDecode":
            return (self._decode(inputs["samples"]),)
        if class_type == "ImageScale":
            images = inputs["image"]
            width, height = inputs["width"], inputs["height"]
            first = images.frames[0]
            if width == 0 and height == 0:
                return (images,)
            if width == 0:
                width = max(1, round(first.width * height / first.height))
            elif height == 0:
                height = max(1, round(first.height * width / first.width))
            _guard_pixels(width, height, len(images.frames))
            frames = [_scale(frame, width, height, inputs["upscale_method"], inputs["crop"]) for frame in images.frames]
            return (_Images(frames, images.text),)
        if class_type == "ImageInvert":
            images = inputs["image"]
            return (_Images([ImageOps.invert(frame) for frame in images.frames], images.text),)
        if class_type == "ImageBlur":
            images = inputs["image"]
            blur = ImageFilter.GaussianBlur(min(inputs["sigma"], float(inputs["blur_radius"])))
            return (_Images([frame.filter(blur) for frame in images.frames], images.text),)
        if class_type == "EmptyImage":
            width, height, batch, color = inputs["width"], inputs["height"], inputs["batch_size"], inputs["color"]
            _guard_pixels(width, height, batch)
            rgb = ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)
            return (_Images([Image.new("RGB", (width, height), rgb) for _ in range(batch)]),)
        if class_type == "SaveImage":
            return {"images": self._save_frames(prompt, inputs["images"], inputs["filename_prefix"], "output")}
        if class_type == "PreviewImage":
            prefix = "ComfyUI_temp_" + uuid.uuid4().hex[:5]
            return {"images": self._save_frames(prompt, inputs["images"], prefix, "temp")}
        if class_type == "VHS_VideoCombine":
            return {"gifs": [self._save_video(inputs)]}
        if class_type == "SaveAnimatedWEBP":
            return {"images": [self._save_webp(inputs)], "animated": [True]}
        raise NotImplementedError(f"node {class_type} has no emulation")

    @staticmethod
    def _decode(latent: _Latent) -> _Images:
        _guard_pixels(latent.width, latent.height, latent.batch)
        if latent.text is None and latent.sources:
            return _Images(list(latent.sources))
        text = latent.text or "ComfyUI"
        frames = []
        for index in range(latent.batch):
            source = latent.sources[min(index, len(latent.sources) - 1)] if latent.sources else None
            label = text if index == 0 else f"{text} ({index + 1}/{latent.batch})"
            picture = make_png(label, latent.width, latent.height, _png(source) if source is not None else None)
            with Image.open(io.BytesIO(picture)) as opened:
                frames.append(opened.convert("RGB"))
        return _Images(frames, text)

    def _claim_name(self, folder: str, prefix: str, extension: str, trailing: str = "_") -> tuple[str, str, str]:
        """``(subfolder, filename, key)`` of the next free ``<prefix>_<counter:05d>_.<ext>``; call with the lock."""
        parts = _split_path(prefix)
        if not parts or prefix.endswith("/"):
            raise _NodeFailure("Exception", "Saving image outside the output folder is not allowed.")
        subfolder, base = "/".join(parts[:-1]), parts[-1]
        counters = [0]
        pattern = re.compile(re.escape(base) + r"_(\d+)")
        for key in self.files[folder]:
            key_folder, _, name = key.rpartition("/")
            match = pattern.match(name)
            if key_folder == subfolder and match:
                counters.append(int(match.group(1)))
        filename = f"{base}_{max(counters) + 1:05d}{trailing}.{extension}"
        return subfolder, filename, "/".join([*parts[:-1], filename])

    def _save_frames(self, prompt: EmulatedPrompt, images: _Images, prefix: str, folder: str) -> list[dict[str, str]]:
        info = PngInfo()
        info.add_text("prompt", json.dumps(prompt.graph))
        saved = []
        for frame in images.frames:
            data = _png(frame, info)
            with self.lock:
                subfolder, filename, key = self._claim_name(folder, prefix, "png")
                self.files[folder][key] = data
            saved.append({"filename": filename, "subfolder": subfolder, "type": folder})
        return saved

    def _save_video(self, inputs: dict[str, Any]) -> dict[str, Any]:
        images: _Images = inputs["images"]
        fmt = inputs["format"]
        fps = inputs["frame_rate"]
        folder = "output" if inputs.get("save_output", True) else "temp"
        frames = images.frames[:_MAX_VIDEO_FRAMES]
        if fmt in ("image/gif", "image/webp"):
            extension = fmt.split("/")[1]
            buffer = io.BytesIO()
            frames[0].save(
                buffer,
                format=extension.upper(),
                save_all=True,
                append_images=frames[1:],
                duration=round(1000 / fps),
                loop=0,
            )
            data = buffer.getvalue()
        else:
            extension = "mp4"
            first = frames[0]
            data = make_mp4(
                images.text, first.width, first.height, _png(first), seconds=len(frames) / fps, fps=max(1, round(fps))
            )
        with self.lock:
            subfolder, filename, key = self._claim_name(folder, inputs["filename_prefix"], extension, trailing="")
            self.files[folder][key] = data
        return {"filename": filename, "subfolder": subfolder, "type": folder, "format": fmt, "frame_rate": fps}

    def _save_webp(self, inputs: dict[str, Any]) -> dict[str, str]:
        frames = inputs["images"].frames
        buffer = io.BytesIO()
        frames[0].save(
            buffer,
            format="WEBP",
            save_all=True,
            append_images=frames[1:],
            duration=round(1000 / inputs["fps"]),
            lossless=inputs["lossless"],
            quality=inputs["quality"],
            method={"default": 4, "fastest": 0, "slowest": 6}[inputs["method"]],
        )
        with self.lock:
            subfolder, filename, key = self._claim_name("output", inputs["filename_prefix"], "webp")
            self.files["output"][key] = buffer.getvalue()
        return {"filename": filename, "subfolder": subfolder, "type": "output"}


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _error(kind: str, message: str, details: str = "", extra_info: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info or {}}


def _invalid_prompt(message: str) -> Reply:
    return Reply.json({"error": _error("invalid_prompt", message), "node_errors": {}}, status=400)


def _links(node: dict[str, Any]) -> list[str]:
    return [
        value[0]
        for value in (node.get("inputs") or {}).values()
        if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
    ]


def _ancestors(graph: dict[str, Any], node_id: str) -> list[str]:
    """``node_id`` and every node it depends on (links to missing nodes ignored)."""
    seen: list[str] = []
    stack = [node_id]
    while stack:
        current = stack.pop()
        if current in seen or current not in graph:
            continue
        seen.append(current)
        stack.extend(_links(graph[current]))
    return seen


def _execution_order(inputs: dict[str, dict[str, Any]], outputs: list[str]) -> list[str]:
    """Dependencies first (depth-first from each output along its validated links, in input order), each once."""
    order: list[str] = []
    done: set[str] = set()

    def visit(node_id: str) -> None:
        if node_id in done:
            return
        done.add(node_id)
        for value in inputs[node_id].values():
            if isinstance(value, tuple):
                visit(value[0])
        order.append(node_id)

    for output in outputs:
        visit(output)
    return order


def _format_value(values: dict[str, tuple[Any, ...]], value: Any) -> Any:
    """An input as ``current_inputs`` of ``execution_error`` shows it: plain values as they are, others as text."""
    if isinstance(value, tuple):
        produced = values.get(value[0])
        value = produced[value[1]] if produced is not None and value[1] < len(produced) else None
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)


def _fake_traceback(class_type: str, exc: BaseException) -> list[str]:
    return [
        '  File "/ComfyUI/execution.py", line 496, in execute\n'
        "    output_data, output_ui, has_subgraph, has_pending_tasks = await get_output_data(...)\n",
        '  File "/ComfyUI/execution.py", line 315, in get_output_data\n'
        "    return_values = await _async_map_node_over_list(...)\n",
        f'  File "/ComfyUI/nodes.py", line 1, in {class_type}\n    raise {_type_name(exc)}(...)\n',
    ]
