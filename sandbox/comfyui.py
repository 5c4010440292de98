"""ComfyUI protocol emulator: a real HTTP + WebSocket server that answers like ComfyUI 0.3.6x does.

It exists so that clients, workers and the sandbox can run end to end without a GPU; it is built on
``LocalEmulator`` (``server.py``) and uses only the standard library and Pillow (plus ``make_mp4``'s optional
ffmpeg). No Django. Where a real server has a quirk a client must cope with, the emulator has it too.

Contract, in short:

* ``ComfyUIEmulator(...).start()`` serves in the background; ``base_url`` is then ``http://host:port``.
  Every route is also served under ``/api/…``. With ``api_key`` set, every route (``/ws`` included) needs
  ``Authorization: Bearer <key>`` (as behind an auth proxy), else 401 ``{"error": "Unauthorized"}``.
* ``POST /prompt`` validates the API-format graph against a small node catalogue (``NODE_TYPES``, served by
  ``GET /object_info``) the way ComfyUI does. Widget inputs are converted like ComfyUI converts them
  (``int()`` / ``float()`` / ``str()`` / ``bool()``: ``"20"``, ``20.0`` and ``true`` are a valid INT).
  Refusals are 400 ``{"error": …, "node_errors": …}``: ``no_prompt``, ``invalid_prompt`` (an unknown node type
  too), ``prompt_no_outputs`` and ``prompt_outputs_failed_validation`` with per-node ``node_errors``
  (``required_input_missing``, ``value_not_in_list``, ``value_smaller_than_min`` / ``value_bigger_than_max``
  whose ``details`` is the input name, ``invalid_input_type``, ``bad_linked_input``, ``return_type_mismatch``,
  ``custom_validation_failed`` for a ``LoadImage`` file that is not there, ``exception_during_validation`` /
  ``exception_during_inner_validation`` for links to missing nodes or outputs). A graph whose outputs are
  only partly valid is accepted (200) and runs the valid outputs, with the errors in ``node_errors``.
  Requests ComfyUI cannot parse (a body that is not JSON, ``"prompt": "a string"``) answer 500 text/plain,
  as its unhandled exceptions do; a ``prompt_id`` is taken as ``str(prompt_id)`` and may repeat.
* Accepted prompts queue FIFO (``"front": true`` jumps ahead) and ONE executor thread runs them one at a
  time, like one GPU. Execution really evaluates the graph: loaders give markers, ``LoadImage`` /
  ``ImageScale`` / ``ImageInvert`` / ``ImageBlur`` / ``EmptyImage`` work on real pixels (Pillow), a
  ``KSampler`` → ``VAEDecode`` chain draws ``make_png(<positive text> seed <seed>, w, h, source)`` where the
  source is the encoded picture of an img2img chain. Latent sizes are cropped to multiples of 8 (as the
  VAE does). Outputs are kept in memory: ``SaveImage`` → ``<prefix>_<counter:05d>_.png`` (``images``),
  ``PreviewImage`` → the temp folder, ``VHS_VideoCombine`` → ``<prefix>_<counter:05d>.mp4`` (``gifs``, via
  ``make_mp4``), ``SaveAnimatedWEBP`` → an animated ``.webp``.
* Caching, as ComfyUI's default cache: a node whose class, inputs and upstream nodes (and, for
  ``LoadImage``, the file's content) equal those of a node of the previous prompt is not run again. It is
  listed in ``execution_cached``, sends no ``executing``, and an output node reports its earlier output
  (the same file) again; a fully cached prompt takes no time and writes nothing new. Prompts that differ
  (a seed, a size) run. ``POST /free`` with ``{"free_memory": true}`` empties the cache.
* A prompt takes ``task_seconds`` (or ``[[slow:S]]``), shared among the nodes it runs; KSampler-bearing
  prompts emit ``progress`` events (at most 8 per sampler, ``max`` = steps) while they run, every node
  ``progress_state`` events. ``POST /interrupt`` stops a sampler between two steps and any other node only
  once it finished (ComfyUI checks between nodes).
* WebSocket ``/ws?clientId=<id>``: ``status`` (with ``sid``) on connect and, while a prompt of that client
  runs, ``{"type": "executing", "data": {"node": <id>}}`` (no ``prompt_id``). One socket per client id: a
  newer one takes the events over, and closing either forgets the id (as ComfyUI does). A prompt's events
  (``execution_start``, ``execution_cached``, ``executing`` per node, ``progress``, ``progress_state``,
  ``executed``, ``execution_success`` / ``execution_error`` / ``execution_interrupted``, then ``executing``
  with ``node: null``) go to its ``client_id``; of a prompt queued without one, ``progress``,
  ``progress_state`` and ``execution_interrupted`` go to EVERY socket and the others to none, so clients
  must filter by ``prompt_id``. Queue changes broadcast ``status``. The history is written after
  ``execution_success`` / ``execution_error`` went out and before ``executing`` with ``node: null``.
* ``GET /history[/{id}]``, ``GET /view``, ``POST /upload/image``, ``GET|POST /queue``, ``POST /interrupt``,
  ``POST /free``, ``GET /system_stats``, ``GET /object_info[/{class}]``, ``GET /prompt`` (queue info),
  ``POST /history``. Errors of ``/view`` and ``/upload/image`` have empty bodies; other methods on a known
  path answer 405 text/plain, unknown GETs an empty 404.
* ``execution_error.exception_message`` and tracebacks carry the server's file paths (``/ComfyUI/input/…``),
  as a real server's do.
* Failure modes are driven by directives found in any string input of the graph, e.g. ``[[fail]]`` in the
  prompt text (``DIRECTIVES``): ``[[fail]]`` / ``[[oom]]`` end in ``execution_error`` at the KSampler (or
  first) node that runs, ``[[malformed]]`` truncates ``GET /history/{id}`` once finished, ``[[slow:S]]`` sets
  the duration, ``[[nows]]`` silences the WebSocket for that prompt.
* ``reset()`` forgets everything (queue, prompts, history, cache, files, requests) without restarting.

Everything is recorded for tests: ``requests`` (base), ``prompts`` (``EmulatedPrompt`` by id; a repeated id
keeps the latest), ``history``, ``inputs`` / ``outputs`` (in-memory folders, ``{"sub/name": bytes}``) and
``submitted_graphs()``.
"""

from __future__ import annotations

import copy
import hashlib
import heapq
import io
import itertools
import json
import logging
import mimetypes
import os
import posixpath
import re
import sys
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError
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
# What ComfyUI adds to the message of an out-of-memory error.
_OOM_TIPS = (
    "This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked before you might have "
    "accidentally set the batch_size to a large number."
)

# Where the emulated server is "installed": its paths show in errors and tracebacks, as a real server's do.
SERVER_ROOT = "/ComfyUI"
_FRONTEND_VERSION = "1.27.10"
_TEMPLATES_VERSION = "0.1.94"
_JSON = "application/json; charset=utf-8"
_TEXT = "text/plain; charset=utf-8"
# aiohttp's answer to an exception in a handler (ComfyUI lets many malformed requests get that far).
_SERVER_ERROR = "500 Internal Server Error\n\nServer got itself in trouble"
# Events of a prompt queued without a client_id that ComfyUI still sends, to every socket.
_BROADCAST_EVENTS = frozenset({"progress", "progress_state", "execution_interrupted"})
_NO_UPGRADE = 'No WebSocket UPGRADE hdr: None\n Can "Upgrade" only to "WebSocket".'

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
    event of the prompt as ``(type, data)``, recorded even under ``[[nows]]`` and whoever received it.
    ``client_id`` is whatever the request said (ComfyUI does not check it is a string).
    """

    prompt_id: str
    number: int | float
    graph: dict[str, Any]
    client_id: Any
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


@dataclass(frozen=True)
class _Cached:
    """A node's result kept for the next prompt: its outputs and, for an output node, its ``ui``."""

    values: tuple[Any, ...]
    ui: dict[str, Any] | None


class _Interrupted(Exception):
    pass


class _ServerFault(Exception):
    """A request ComfyUI's handler would crash on: answered 500 text/plain, as aiohttp does."""


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


def _annotated(name: str, default_type: str | None) -> tuple[str, str | None]:
    """``x.png [output]`` → ``("x.png", "output")``; a name without the suffix keeps ``default_type``."""
    match = _ANNOTATION_RE.match(name)
    return (match.group(1), match.group(2)) if match else (name, default_type)


def _inside(folder: str, subfolder: str) -> list[str] | None:
    """The segments of ``subfolder`` of the ``folder`` type's folder once normalised, or None when it ends up
    outside (an absolute path, ``..`` too far), as ComfyUI checks a subfolder of ``/view`` and ``/upload/image``.
    The type folders sit side by side and are named after their type: ``../input`` is the input folder."""
    if subfolder.startswith("/"):
        return None
    root = f"/{folder}"
    path = posixpath.normpath(posixpath.join(root, subfolder))
    if path != root and not path.startswith(root + "/"):
        return None
    return [part for part in path[len(root) :].split("/") if part]


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
        self._pending: list[tuple[int | float, int, EmulatedPrompt]] = []
        self._sequence = itertools.count()
        self._number = 0
        self._running: EmulatedPrompt | None = None
        self._last_node: str | None = None  # what a client reconnecting while its prompt runs is told
        self._cache: dict[Any, _Cached] = {}  # by node key (``_node_keys``): the previous prompt's results
        self._free_memory = False  # POST /free asked to empty the cache once the running prompt ended
        self._queue_cv = threading.Condition(self.lock)
        # POST /interrupt: a sampler stops at its next step, any other node once it finished.
        self._interrupt = threading.Event()
        # stop() / reset(): whatever runs stops at once.
        self._halt = threading.Event()
        self._stopping = False
        self._executor: threading.Thread | None = None
        self._sockets: dict[str, WebSocket] = {}  # one per client id, as in ComfyUI
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
            self._halt.set()
            self._interrupt.set()
            self._queue_cv.notify_all()
        if self._executor is not None:
            self._executor.join(timeout=5)
            self._executor = None

    def reset(self, timeout: float = 5.0) -> None:
        """Start afresh without restarting the server: drop the queue, stop the running prompt, then forget
        prompts, history, the cache, files and recorded requests (open WebSockets stay connected)."""
        with self._queue_cv:
            for _, _, prompt in self._pending:
                prompt.state = "deleted"
            self._pending.clear()
            if self._running is not None:
                self._halt.set()
                self._interrupt.set()
        deadline = time.monotonic() + timeout
        while self._running is not None and time.monotonic() < deadline:
            time.sleep(0.005)
        with self.lock:
            self.prompts.clear()
            self.history.clear()
            self._accepted.clear()
            self._number = 0
            self._cache.clear()
            self._free_memory = False
            self._last_node = None
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
            ("POST", "/free"): self._post_free,
            ("GET", "/system_stats"): self._get_system_stats,
            ("GET", "/object_info"): self._get_object_info,
            ("GET", "/ws"): lambda _request: Reply.text(_NO_UPGRADE, 400, _TEXT),
            ("GET", "/"): lambda _request: Reply.text("<html><body>ComfyUI emulator</body></html>", 200, "text/html"),
        }
        handler = routes.get((method, path))
        if handler is None and method == "GET" and path.startswith("/history/"):
            prompt_id = path[len("/history/") :]
            handler = lambda _request: self._get_history_item(prompt_id)  # noqa: E731
        elif handler is None and method == "GET" and path.startswith("/object_info/"):
            class_type = path[len("/object_info/") :]
            handler = lambda request: self._get_object_info(request, class_type)  # noqa: E731
        if handler is None:
            # ComfyUI serves its web app under every other path, for GET only: other methods are not allowed
            # anywhere, and a GET of a file that is not there (or of a POST-only route) is an empty 404.
            if method == "GET":
                return _empty(404)
            return Reply.text("405: Method Not Allowed", 405, _TEXT)
        try:
            return handler(request)
        except _ServerFault:
            return Reply.text(_SERVER_ERROR, 500, _TEXT)

    @staticmethod
    def _json_body(request: Request) -> Any:
        """The body as JSON whatever its Content-Type, as aiohttp's ``request.json()``; else a server fault."""
        try:
            return json.loads(request.body)
        except ValueError as exc:  # not JSON, not UTF-8, or empty
            raise _ServerFault() from exc

    # ---- POST /prompt and validation ----------------------------------------------------------------

    def _post_prompt(self, request: Request) -> Reply:
        body = self._json_body(request)
        if not isinstance(body, dict | list | str):
            raise _ServerFault()  # ComfyUI looks for keys with `in`, which a number or null cannot answer
        with self.lock:
            if isinstance(body, dict) and "number" in body:
                try:
                    number: int | float = float(body["number"])
                except (TypeError, ValueError) as exc:
                    raise _ServerFault() from exc
            else:
                # Every request takes a number, refused ones included.
                number = self._number
                if isinstance(body, dict) and body.get("front"):
                    number = -number
                self._number += 1
        if not isinstance(body, dict) or "prompt" not in body:
            error = _error("no_prompt", "No prompt provided", "No prompt provided")
            return _json({"error": error, "node_errors": {}}, 400)
        graph = copy.deepcopy(body["prompt"])
        prompt_id = str(body["prompt_id"]) if "prompt_id" in body else str(uuid.uuid4())
        error, good_outputs, node_errors, inputs = self._validate(graph)
        extra_data = copy.deepcopy(body.get("extra_data", {}))
        if "client_id" in body:
            if not isinstance(extra_data, dict):
                raise _ServerFault()
            extra_data["client_id"] = body["client_id"]
        if error is not None:
            return _json({"error": error, "node_errors": node_errors}, 400)

        strings = [
            value
            for node in graph.values()
            if isinstance(node.get("inputs"), dict)
            for value in node["inputs"].values()
            if isinstance(value, str)
        ]
        with self._queue_cv:
            prompt = EmulatedPrompt(
                prompt_id=prompt_id,
                number=number,
                graph=graph,
                client_id=extra_data.get("client_id") if isinstance(extra_data, dict) else None,
                extra_data=extra_data,
                outputs_to_execute=good_outputs,
                node_errors=node_errors,
                directives=parse_directives(" ".join(strings)),
                order=_execution_order(inputs, good_outputs),
                inputs=inputs,
                created=time.time(),
            )
            self.prompts[prompt.prompt_id] = prompt  # a repeated prompt_id runs again; the latest is kept
            self._accepted.append(prompt)
            heapq.heappush(self._pending, (number, next(self._sequence), prompt))
            self._queue_cv.notify_all()
        self._broadcast_status()
        return _json({"prompt_id": prompt.prompt_id, "number": number, "node_errors": node_errors})

    def _validate(
        self, graph: Any
    ) -> tuple[dict[str, Any] | None, list[str], dict[str, Any], dict[str, dict[str, Any]]]:
        """``(error or None, valid output ids, node_errors, converted inputs by node)``; ``_ServerFault`` for a
        graph ComfyUI's validation would crash on."""
        if not isinstance(graph, dict):
            if isinstance(graph, list | str) and not graph:
                return _error("prompt_no_outputs", "Prompt has no outputs"), [], {}, {}
            raise _ServerFault()
        outputs: list[str] = []
        for node_id, node in graph.items():
            if not isinstance(node, dict | list | str):
                raise _ServerFault()
            if "class_type" not in node:
                message = "Cannot execute because a node is missing the class_type property."
                return _error("invalid_prompt", message, f"Node ID '#{node_id}'"), [], {}, {}
            if not isinstance(node, dict):
                raise _ServerFault()
            class_type = node["class_type"]
            try:
                node_type = NODE_TYPES.get(class_type)
            except TypeError as exc:  # an unhashable class_type
                raise _ServerFault() from exc
            if node_type is None:
                message = f"Cannot execute because node {class_type} does not exist."
                return _error("invalid_prompt", message, f"Node ID '#{node_id}'"), [], {}, {}
            if node_type.output_node:
                outputs.append(node_id)
        if not outputs:
            return _error("prompt_no_outputs", "Prompt has no outputs"), [], {}, {}

        validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}
        converted: dict[str, dict[str, Any]] = {}
        good: list[str] = []
        own_errors: list[dict[str, Any]] = []
        node_errors: dict[str, Any] = {}
        for output in sorted(outputs, key=_natural):
            try:
                valid = self._validate_node(graph, output, validated, converted, ())
            except _VALIDATION_CRASHES as exc:
                reasons = [
                    {
                        "type": "exception_during_validation",
                        "message": "Exception when validating node",
                        "details": str(exc),
                        "extra_info": {"exception_type": _type_name(exc), "traceback": _validation_traceback()},
                    }
                ]
                validated[output] = (False, reasons)
                valid = False
            if valid:
                good.append(output)
                continue
            own_errors += validated[output][1]
            # As ComfyUI: every node validated so far that has errors of its own counts this output as
            # dependent (nodes invalid only through an upstream node carry no errors).
            for node_id, (ok, reasons) in validated.items():
                if ok or not reasons:
                    continue
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
        path: tuple[str, ...],
    ) -> bool:
        """Whether ``node_id`` and everything it links to is valid; its errors go to ``validated``.

        A link to a missing node or output, or a node without ``inputs``, raises (KeyError, IndexError,
        TypeError) as it does in ComfyUI: the node linking to it reports the exception. A cycle raises
        RecursionError, as ComfyUI's recursion ends in one.
        """
        if node_id in validated:
            return validated[node_id][0]
        if node_id in path:
            raise RecursionError("maximum recursion depth exceeded")
        node = graph[node_id]
        node_type = NODE_TYPES[node["class_type"]]
        given = node["inputs"]
        if not isinstance(given, dict):
            raise TypeError(f"{type(given).__name__} indices must be integers or slices, not str")
        errors: list[dict[str, Any]] = []
        custom_errors: list[dict[str, Any]] = []  # LoadImage's own check, reported after the others
        valid = True
        values: dict[str, Any] = {}
        specs = [(name, spec, True) for name, spec in node_type.required.items()]
        specs += [(name, spec, False) for name, spec in node_type.optional.items()]
        for name, (kind, config), required in specs:
            if name not in given:
                if required:
                    errors.append(
                        _error("required_input_missing", "Required input is missing", name, {"input_name": name})
                    )
                continue
            value = given[name]
            input_config = [self._input_files() if kind == _INPUT_FILES else kind, config]
            if isinstance(value, list):
                if len(value) != 2:
                    message = "Bad linked input, must be a length-2 list of [node_id, slot_index]"
                    extra = {"input_name": name, "input_config": input_config, "received_value": value}
                    errors.append(_error("bad_linked_input", message, name, extra))
                    continue
                target, slot = value
                received = NODE_TYPES[graph[target]["class_type"]].outputs[slot]
                expected = "COMBO" if isinstance(kind, list) or kind == _INPUT_FILES else kind
                if received != expected and "*" not in (received, expected):
                    details = f"{name}, received_type({received}) mismatch input_type({expected})"
                    extra = {
                        "input_name": name,
                        "input_config": input_config,
                        "received_type": received,
                        "linked_node": value,
                    }
                    errors.append(
                        _error("return_type_mismatch", "Return type mismatch between linked nodes", details, extra)
                    )
                    continue
                try:
                    if not self._validate_node(graph, target, validated, converted, (*path, node_id)):
                        valid = False
                        continue
                except _VALIDATION_CRASHES as exc:
                    valid = False
                    extra = {
                        "input_name": name,
                        "input_config": input_config,
                        "exception_message": str(exc),
                        "exception_type": _type_name(exc),
                        "traceback": _validation_traceback(),
                        "linked_node": value,
                    }
                    message = "Exception when validating inner node"
                    validated[target] = (False, [_error("exception_during_inner_validation", message, str(exc), extra)])
                    continue
                values[name] = (target, slot)
                continue
            if isinstance(value, dict) and "__value__" in value:
                value = value["__value__"]
            if kind == _INPUT_FILES:
                if isinstance(value, str) and self._find_file(value, "input") is not None:
                    values[name] = value
                else:
                    details = f"{name} - Invalid image file: {value}"
                    message = "Custom validation failed for node"
                    custom_errors.append(_error("custom_validation_failed", message, details, {"input_name": name}))
                continue
            problem, value = _check_widget(name, kind, config, input_config, value)
            if problem is not None:
                errors.append(problem)
                continue
            values[name] = value
        errors += custom_errors
        ok = valid and not errors
        validated[node_id] = (ok, errors)
        converted[node_id] = values
        return ok

    def _input_files(self) -> list[str]:
        """LoadImage's choices: the files of the input folder (not of its subfolders)."""
        with self.lock:
            return sorted(key for key in self.inputs if "/" not in key)

    # ---- other routes -------------------------------------------------------------------------------

    def _get_prompt(self, request: Request) -> Reply:
        return _json({"exec_info": {"queue_remaining": self.queue_remaining()}})

    def _get_history(self, request: Request) -> Reply:
        try:
            max_items = int(request.query["max_items"]) if "max_items" in request.query else None
            offset = int(request.query.get("offset", -1))
        except ValueError as exc:
            raise _ServerFault() from exc
        with self.lock:
            items = list(self.history.items())
            if offset < 0 and max_items is not None:
                offset = len(items) - max_items
            items = items[max(0, offset) :]
            if max_items is not None:
                items = items[:max_items]
            return _json(copy.deepcopy(dict(items)))

    def _get_history_item(self, prompt_id: str) -> Reply:
        with self.lock:
            entry = self.history.get(prompt_id)
            prompt = self.prompts.get(prompt_id)
            body = json.dumps({prompt_id: entry} if entry is not None else {}).encode()
        if entry is not None and prompt is not None and "malformed" in prompt.directives:
            return Reply(status=200, body=body[: len(body) // 2], content_type=_JSON)
        return Reply(status=200, body=body, content_type=_JSON)

    def _post_history(self, request: Request) -> Reply:
        body = self._json_body(request)
        try:
            with self.lock:
                if "clear" in body and body["clear"]:
                    self.history.clear()
                if "delete" in body:
                    for prompt_id in body["delete"]:
                        self.history.pop(prompt_id, None)
        except TypeError as exc:  # a body or a list ComfyUI cannot look into
            raise _ServerFault() from exc
        return _empty(200)

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
        query = request.query
        if "filename" not in query:
            return _empty(404)
        filename, folder = _annotated(query["filename"], None)
        if not filename or filename.startswith("/") or ".." in filename:
            return _empty(400)
        folder = folder or query.get("type", "output")
        if folder not in FOLDER_TYPES:
            return _empty(400)
        parts: list[str] | None = []
        if "subfolder" in query:
            parts = _inside(folder, query["subfolder"])
            if parts is None:
                return _empty(403)
        name = filename.rsplit("/", 1)[-1]  # ComfyUI keeps only the file name of a path
        with self.lock:
            data = self.files[folder].get("/".join([*parts, name]))
        if data is None:
            return _empty(404)
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return Reply(
            status=200, body=data, content_type=content_type, headers={"Content-Disposition": f'filename="{name}"'}
        )

    def _post_upload(self, request: Request) -> Reply:
        folder = request.form.get("type", "input")
        if folder not in FOLDER_TYPES or "image" in request.form:
            raise _ServerFault()  # ComfyUI has no folder for that type; an "image" field that is no file
        image = request.files.get("image")
        if image is None:
            return _empty(400)
        filename = image.filename
        if not filename or "/" in filename or filename == ".":
            raise _ServerFault()  # aiohttp takes a part without a name for a text field; no such folder
        subfolder = request.form.get("subfolder", "")
        folder_parts = _inside(folder, subfolder)
        if folder_parts is None or filename == "..":
            return _empty(400)
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
        return _json({"name": filename, "subfolder": subfolder, "type": folder})

    def _get_queue(self, request: Request) -> Reply:
        with self.lock:
            running = [self._running.queue_item] if self._running is not None else []
            pending = [prompt.queue_item for _, _, prompt in sorted(self._pending, key=lambda entry: entry[:2])]
            return _json(copy.deepcopy({"queue_running": running, "queue_pending": pending}))

    def _post_queue(self, request: Request) -> Reply:
        body = self._json_body(request)
        try:
            with self.lock:
                doomed: list[Any] = []
                if "clear" in body and body["clear"]:
                    doomed = [prompt.prompt_id for _, _, prompt in self._pending]
                if "delete" in body:
                    doomed += list(body["delete"])
                kept = []
                for entry in self._pending:
                    if entry[2].prompt_id in doomed:
                        entry[2].state = "deleted"
                    else:
                        kept.append(entry)
        except TypeError as exc:  # a body or a list ComfyUI cannot look into
            raise _ServerFault() from exc
        with self.lock:
            changed = len(kept) != len(self._pending)
            heapq.heapify(kept)
            self._pending = kept
        if changed:
            self._broadcast_status()
        return _empty(200)

    def _post_interrupt(self, request: Request) -> Reply:
        try:
            body = json.loads(request.body)
        except ValueError:
            body = {}  # ComfyUI reads this body leniently: anything unreadable interrupts whatever runs
        if not isinstance(body, dict):
            raise _ServerFault()
        wanted = body.get("prompt_id")
        with self.lock:
            if self._running is not None and (not wanted or wanted == self._running.prompt_id):
                self._interrupt.set()
        return _empty(200)

    def _post_free(self, request: Request) -> Reply:
        body = self._json_body(request)
        if not isinstance(body, dict):
            raise _ServerFault()
        if body.get("free_memory"):
            with self.lock:
                if self._running is None:
                    self._cache.clear()
                else:
                    self._free_memory = True
        return _empty(200)

    def _get_system_stats(self, request: Request) -> Reply:
        try:
            page = os.sysconf("SC_PAGE_SIZE")
            ram_total = os.sysconf("SC_PHYS_PAGES") * page
            ram_free = os.sysconf("SC_AVPHYS_PAGES") * page
        except (ValueError, OSError, AttributeError):
            ram_total = ram_free = 0
        return _json(
            {
                "system": {
                    "os": os.name,
                    "ram_total": ram_total,
                    "ram_free": ram_free,
                    "comfyui_version": COMFYUI_VERSION,
                    "required_frontend_version": _FRONTEND_VERSION,
                    "installed_templates_version": _TEMPLATES_VERSION,
                    "required_templates_version": _TEMPLATES_VERSION,
                    "python_version": sys.version,
                    "pytorch_version": "2.8.0+cpu",
                    "embedded_python": False,
                    "argv": ["main.py", "--cpu"],
                },
                # On a CPU ComfyUI reports the RAM as the device's memory.
                "devices": [
                    {
                        "name": "cpu",
                        "type": "cpu",
                        "index": None,
                        "vram_total": ram_total,
                        "vram_free": ram_free,
                        "torch_vram_total": ram_total,
                        "torch_vram_free": ram_free,
                    }
                ],
            }
        )

    def _get_object_info(self, request: Request, class_type: str | None = None) -> Reply:
        if class_type is not None:
            node_type = NODE_TYPES.get(class_type)
            return _json({class_type: self._describe(node_type)} if node_type else {})
        return _json({name: self._describe(node_type) for name, node_type in NODE_TYPES.items()})

    def _describe(self, node_type: NodeType) -> dict[str, Any]:
        def render(inputs: dict[str, tuple[Any, dict[str, Any]]]) -> dict[str, Any]:
            rendered = {}
            for name, (kind, config) in inputs.items():
                if kind == _INPUT_FILES:
                    kind = self._input_files()
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
                self._sockets[sid] = websocket  # a newer socket of the same client takes its events over
                running, node = self._running, self._last_node
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
                # ComfyUI's greeting of a client whose prompt runs: the node only, without prompt_id.
                websocket.send_json({"type": "executing", "data": {"node": node}})
        try:
            websocket.wait_closed()
        finally:
            with self.lock:
                # As ComfyUI: the client id is forgotten when any of its sockets closes, a replaced one too.
                self._sockets.pop(sid, None)

    def _send(self, sockets: list[WebSocket], message: dict[str, Any]) -> None:
        for websocket in sockets:
            if not websocket.send_json(message):
                with self.lock:
                    for sid, registered in list(self._sockets.items()):
                        if registered is websocket:
                            del self._sockets[sid]

    def _emit(self, prompt: EmulatedPrompt, event: str, data: dict[str, Any]) -> None:
        """Record an event of ``prompt`` and send it where ComfyUI would: to the prompt's client, or for a
        prompt without one, a few kinds (``_BROADCAST_EVENTS``) to every socket and the others nowhere."""
        with self.lock:
            prompt.events.append((event, data))
        if "nows" in prompt.directives:
            return
        with self._ws_lock:
            with self.lock:
                if prompt.client_id is None:
                    sockets = list(self._sockets.values()) if event in _BROADCAST_EVENTS else []
                else:
                    client = self._sockets.get(prompt.client_id) if isinstance(prompt.client_id, str) else None
                    sockets = [client] if client is not None else []
            self._send(sockets, {"type": event, "data": data})

    def _broadcast_status(self) -> None:
        message = {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}}}
        with self._ws_lock:
            with self.lock:
                sockets = list(self._sockets.values())
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
                self._halt.clear()
            self._broadcast_status()  # ComfyUI tells the queue again when its worker takes a prompt
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
                    self._last_node = None

    def _message(self, prompt: EmulatedPrompt, event: str, data: dict[str, Any]) -> None:
        """A message that also goes into the history's ``status.messages``, as ComfyUI's ``add_message``."""
        data = {**data, "timestamp": _now_ms()}
        with self.lock:
            prompt.messages.append([event, data])
        self._emit(prompt, event, data)

    def _pause(self, seconds: float, *, interruptible: bool) -> None:
        """Let a node's share of the time pass: a sampler (``interruptible``) stops at an interrupt, every node
        when the emulator stops or resets."""
        if (self._interrupt if interruptible else self._halt).wait(max(0.0, seconds)):
            raise _Interrupted()

    def _node_keys(self, prompt: EmulatedPrompt) -> dict[str, Any]:
        """A key per node to run, equal for nodes that compute the same thing: the class, the inputs, the keys
        of the linked nodes (not their ids) and, for LoadImage, the file's content, as ComfyUI's cache key."""
        keys: dict[str, Any] = {}

        def key(node_id: str) -> Any:
            if node_id not in keys:
                class_type = prompt.graph[node_id]["class_type"]
                parts: list[tuple[Any, ...]] = []
                for name, value in sorted(prompt.inputs[node_id].items()):
                    if isinstance(value, tuple):
                        parts.append((name, key(value[0]), value[1]))
                    else:
                        parts.append((name, json.dumps(value, sort_keys=True)))
                if class_type == "LoadImage":
                    parts.append(("content", self._file_digest(prompt.inputs[node_id]["image"])))
                keys[node_id] = (class_type, tuple(parts))
            return keys[node_id]

        for node_id in prompt.order:
            key(node_id)
        return keys

    def _file_digest(self, name: str) -> str | None:
        found = self._find_file(name, "input")
        if found is None:
            return None
        with self.lock:
            return hashlib.sha256(self.files[found[0]][found[1]]).hexdigest()

    def _progress_state(
        self,
        prompt: EmulatedPrompt,
        states: dict[str, dict[str, Any]],
        node_id: str,
        value: float,
        most: float,
        state: str,
    ) -> None:
        """Update one node's progress and send every started node's, as ComfyUI's ``progress_state``."""
        states[node_id] = {"value": value, "max": most, "state": state}
        nodes = {
            name: {
                **entry,
                "node_id": name,
                "prompt_id": prompt.prompt_id,
                "display_node_id": name,
                "parent_node_id": None,
                "real_node_id": name,
            }
            for name, entry in states.items()
        }
        self._emit(prompt, "progress_state", {"prompt_id": prompt.prompt_id, "nodes": nodes})

    def _report_output(self, prompt: EmulatedPrompt, node_id: str, ui: dict[str, Any]) -> None:
        with self.lock:
            prompt.outputs[node_id] = ui
        self._emit(
            prompt, "executed", {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": prompt.prompt_id}
        )

    def _execute(self, prompt: EmulatedPrompt) -> None:
        graph, order, directives = prompt.graph, prompt.order, prompt.directives
        keys = self._node_keys(prompt)
        with self.lock:
            # The cache keeps what the previous prompt computed, as far as this one can use it.
            wanted = set(keys.values())
            self._cache = {key: entry for key, entry in self._cache.items() if key in wanted}
            cached = {node_id: self._cache[keys[node_id]] for node_id in order if keys[node_id] in self._cache}
        to_run = [node_id for node_id in order if node_id not in cached]
        slow = slow_seconds(directives)
        duration = self.task_seconds if slow is None else slow
        samplers = [node_id for node_id in to_run if graph[node_id]["class_type"] == "KSampler"]
        if samplers:
            sampler_share = duration * 0.8 / len(samplers)
            other_share = duration * 0.2 / max(1, len(to_run) - len(samplers))
        else:
            sampler_share = other_share = duration / max(1, len(to_run))
        failure = next((kind for kind in ("oom", "fail") if kind in directives), None)
        failing_node = (samplers or to_run)[0] if failure and to_run else None

        self._message(prompt, "execution_start", {"prompt_id": prompt.prompt_id})
        cached_nodes = [node_id for node_id in graph if node_id in cached]
        self._message(prompt, "execution_cached", {"nodes": cached_nodes, "prompt_id": prompt.prompt_id})
        values: dict[str, tuple[Any, ...]] = {}
        executed: list[str] = []
        states: dict[str, dict[str, Any]] = {}
        node_id = order[0]
        outcome: tuple[str, dict[str, Any]]
        try:
            for node_id in order:
                class_type = graph[node_id]["class_type"]
                node_type = NODE_TYPES[class_type]
                if node_id in cached:
                    values[node_id] = cached[node_id].values
                    if cached[node_id].ui is not None:  # an output node tells its earlier output again
                        self._report_output(prompt, node_id, cached[node_id].ui)
                        self._progress_state(prompt, states, node_id, 1, 1, "finished")
                    continue
                self._progress_state(prompt, states, node_id, 0.0, 1.0, "running")
                if prompt.client_id is not None:
                    with self.lock:
                        self._last_node = node_id
                self._emit(
                    prompt, "executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt.prompt_id}
                )
                if self._interrupt.is_set():  # ComfyUI looks for an interrupt as a node starts
                    raise _Interrupted()
                sampler = class_type == "KSampler"
                if node_id == failing_node:
                    self._pause((sampler_share if sampler else other_share) / 2, interruptible=sampler)
                    if failure == "oom":
                        raise _NodeFailure(_OOM_TYPE, OOM_MESSAGE)
                    raise _NodeFailure("RuntimeError", FAILURE_MESSAGE)
                if sampler:
                    steps = prompt.inputs[node_id]["steps"]
                    count = max(1, min(steps, _PROGRESS_EVENTS))
                    for index in range(1, count + 1):
                        self._pause(sampler_share / count, interruptible=True)
                        value = round(steps * index / count)
                        self._progress_state(prompt, states, node_id, value, steps, "running")
                        self._emit(
                            prompt,
                            "progress",
                            {"value": value, "max": steps, "prompt_id": prompt.prompt_id, "node": node_id},
                        )
                else:
                    self._pause(other_share, interruptible=False)
                inputs = {
                    name: values[value[0]][value[1]] if isinstance(value, tuple) else value
                    for name, value in prompt.inputs[node_id].items()
                }
                result = self._run_node(prompt, class_type, inputs)
                ui = None
                if node_type.output_node:
                    ui = result
                    values[node_id] = (ui,) * len(node_type.outputs)
                    self._report_output(prompt, node_id, ui)
                else:
                    values[node_id] = result
                with self.lock:
                    self._cache[keys[node_id]] = _Cached(values[node_id], ui)
                executed.append(node_id)
                done = states[node_id]["max"]
                self._progress_state(prompt, states, node_id, done, done, "finished")
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
            message = exc.message if isinstance(exc, _NodeFailure) else str(exc)
            tips = _OOM_TIPS if _type_name(exc) == _OOM_TYPE else ""
            outcome = (
                "execution_error",
                {
                    "prompt_id": prompt.prompt_id,
                    "node_id": node_id,
                    "node_type": graph[node_id]["class_type"],
                    "executed": list(executed),
                    "exception_message": f"{message}\n{tips}",
                    "exception_type": _type_name(exc),
                    "traceback": _fake_traceback(graph[node_id]["class_type"], exc),
                    "current_inputs": current_inputs,
                    "current_outputs": list(graph),
                },
            )
        self._finish(prompt, *outcome)

    def _finish(self, prompt: EmulatedPrompt, event: str, data: dict[str, Any]) -> None:
        # ComfyUI sends the outcome while the prompt runs, writes the history once it returned, then tells the
        # queue and the end: a client must not expect the history the moment execution_success arrives.
        self._message(prompt, event, data)
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
            self._last_node = None
            if self._free_memory:
                self._cache.clear()
                self._free_memory = False
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
            path = f"{SERVER_ROOT}/input/{found[1] if found else inputs['image']}"
            if found is None:  # deleted since the prompt was queued
                raise FileNotFoundError(2, "No such file or directory", path)
            with self.lock:
                data = self.files[found[0]][found[1]]
            try:
                opened = Image.open(io.BytesIO(data))
            except UnidentifiedImageError:
                # Pillow names the file it could not read: on a real server, the server's own path.
                raise UnidentifiedImageError(f"cannot identify image file {path!r}") from None
            with opened:
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


def _json(value: Any, status: int = 200) -> Reply:
    return Reply(status=status, body=json.dumps(value).encode(), content_type=_JSON)


def _empty(status: int) -> Reply:
    """ComfyUI's bare answers (``web.Response(status=…)``): no body."""
    return Reply(status=status, content_type="application/octet-stream")


# What ComfyUI's validation raises on links to missing nodes or outputs, nodes without inputs and cycles.
_VALIDATION_CRASHES = (LookupError, TypeError, RecursionError)
_CONVERSIONS = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


def _check_widget(
    name: str, kind: Any, config: dict[str, Any], input_config: list[Any], value: Any
) -> tuple[dict[str, Any] | None, Any]:
    """``(error or None, converted value)`` of a widget input: converted the way ComfyUI converts (``int("20")``,
    ``int(20.5)``, ``int(True)``, ``float("1")`` are fine), then checked against min, max and the choices."""
    convert = _CONVERSIONS.get(kind) if isinstance(kind, str) else None
    if convert is not None:
        try:
            converted = convert(value)
        except (TypeError, ValueError, OverflowError) as exc:
            extra = {
                "input_name": name,
                "input_config": input_config,
                "received_value": value,
                "exception_message": str(exc),
            }
            message = f"Failed to convert an input value to a {kind} value"
            return _error("invalid_input_type", message, f"{name}, {value}, {exc}", extra), value
        value = converted
    extra = {"input_name": name, "input_config": input_config, "received_value": value}
    if "min" in config and value < config["min"]:
        return _error(
            "value_smaller_than_min", f"Value {value} smaller than min of {config['min']}", name, extra
        ), value
    if "max" in config and value > config["max"]:
        return _error("value_bigger_than_max", f"Value {value} bigger than max of {config['max']}", name, extra), value
    if isinstance(kind, list) and value not in kind:
        if len(kind) > 20:  # ComfyUI does not send long lists (model folders) back
            choices, extra["input_config"] = f"(list of length {len(kind)})", None
        else:
            choices = str(kind)
        return _error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {choices}", extra), value
    return None, value


def _validation_traceback() -> list[str]:
    return [
        f'  File "{SERVER_ROOT}/execution.py", line 808, in validate_inputs\n'
        "    r = await validate_inputs(prompt_id, prompt, o_id, validated)\n",
    ]


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
        f'  File "{SERVER_ROOT}/execution.py", line 496, in execute\n'
        "    output_data, output_ui, has_subgraph, has_pending_tasks = await get_output_data(...)\n",
        f'  File "{SERVER_ROOT}/execution.py", line 315, in get_output_data\n'
        "    return_values = await _async_map_node_over_list(...)\n",
        f'  File "{SERVER_ROOT}/nodes.py", line 1, in {class_type}\n    raise {_type_name(exc)}(...)\n',
    ]
