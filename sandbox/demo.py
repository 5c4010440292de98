"""The quickstart flow, walked over HTTP exactly as a client would: ``make demo`` and its test use it.

Token → box → upload an image → generate an image from it → generate a video from that image, printing
each request (as the equivalent curl command) and following each generation until it ends.
"""

import json
import time
from collections.abc import Callable
from typing import Any

import httpx

IMAGE_MODEL = "Nano Banana Edit"
VIDEO_MODEL = "Veo 3.1 Fast image-to-video"
LOCAL_PROVIDER, LOCAL_MODEL = "ComfyUI sandbox", "Flux img2img"  # a local GPU server, emulated


class DemoFailed(Exception):
    """A step of the walk failed; ``str()`` names the step and what the API answered."""


class Walk:
    def __init__(self, api_url: str, *, out: Callable[[str], None] = print, timeout: float = 120.0):
        self.api_url = api_url.rstrip("/")
        self.client = httpx.Client(base_url=self.api_url, timeout=60)
        self.out = out
        self.timeout = timeout
        self.token: str | None = None

    def request(self, step: str, method: str, path: str, *, expect: int, **kwargs) -> Any:
        self.out(f"\n{step}\n  {self._as_curl(method, path, kwargs)}")
        headers = {"Authorization": f"Token {self.token}"} if self.token else {}
        try:
            response = self.client.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise DemoFailed(f"{step}: {method} {path} failed: {exc}") from exc
        if response.status_code != expect:
            raise DemoFailed(f"{step}: {method} {path} answered {response.status_code}: {response.text[:500]}")
        return response.json()

    def _as_curl(self, method: str, path: str, kwargs: dict) -> str:
        parts = [f"curl -X {method} {self.api_url}{path}"]
        if self.token:
            parts.append(f'-H "Authorization: Token {self.token}"')
        if "json" in kwargs:
            parts.append(f"-H \"Content-Type: application/json\" -d '{json.dumps(kwargs['json'])}'")
        for name, value in (kwargs.get("files") or {}).items():
            parts.append(f'-F "{name}=@{value[0]}"')
        for name, value in (kwargs.get("data") or {}).items():
            parts.append(f'-F "{name}={value}"')
        if kwargs.get("params"):
            parts[0] += "?" + "&".join(f"{k}={v}" for k, v in kwargs["params"].items())
        return " \\\n      ".join(parts)

    def follow(self, step: str, asset_id: int) -> dict:
        """GET the asset until it is COMPLETED (returned) or FAILED (``DemoFailed`` with its error_message)."""
        self.out(f"  following: GET {self.api_url}/api/assets/{asset_id}/")
        started = time.monotonic()
        last = None
        headers = {"Authorization": f"Token {self.token}"}
        while time.monotonic() - started < self.timeout:
            asset = self.client.get(f"/api/assets/{asset_id}/", headers=headers).json()
            progress = f" {asset['progress'] * 100:.0f}%" if asset.get("progress") is not None else ""
            line = f"  [{time.monotonic() - started:5.1f}s] {asset['status']}{progress}"
            if line.split("] ")[1] != last:
                self.out(line + (f"  task {asset['external_task_id']}" if asset["external_task_id"] else ""))
                last = line.split("] ")[1]
            if asset["status"] == "COMPLETED":
                return asset
            if asset["status"] == "FAILED":
                raise DemoFailed(f"{step}: the generation failed: {asset['error_message']}")
            time.sleep(0.5)
        raise DemoFailed(f"{step}: still {last} after {self.timeout:.0f} s — is the worker running? (var/worker.log)")


def walk(
    api_url: str,
    *,
    username: str,
    password: str,
    image: bytes,
    out: Callable[[str], None] = print,
    timeout: float = 120.0,
) -> dict[str, dict]:
    """Run the quickstart flow against ``api_url``; returns the upload, image, video and local assets.

    Raises ``DemoFailed`` naming the step that failed.
    """
    demo = Walk(api_url, out=out, timeout=timeout)
    token = demo.request(
        "1. Get a token", "POST", "/api/auth/token/", expect=200, json={"username": username, "password": password}
    )
    demo.token = token["token"]
    box = demo.request("2. Create a box", "POST", "/api/boxes/", expect=201, json={"name": "Demo box"})
    upload = demo.request(
        "3. Upload an image",
        "POST",
        f"/api/boxes/{box['id']}/upload/",
        expect=201,
        files={"file": ("demo-source.png", image, "image/png")},
        data={"prompt_text": "Source image"},
    )
    out(f"  → asset {upload['id']}: {upload['mime_type']} {upload['width']}×{upload['height']}")
    models = demo.request("4. List the AI models", "GET", "/api/ai-models/", expect=200, params={"page_size": 100})
    by_name = {m["name"]: m for m in models["results"] if m["sandbox"] and m["provider"] != LOCAL_PROVIDER}
    local = {m["name"]: m for m in models["results"] if m["provider"] == LOCAL_PROVIDER}
    missing = [name for name in (IMAGE_MODEL, VIDEO_MODEL) if name not in by_name]
    missing += [f"{LOCAL_PROVIDER} / {LOCAL_MODEL}"] if LOCAL_MODEL not in local else []
    if missing:
        raise DemoFailed(f"4. List the AI models: no sandbox model named {missing}; run setup_sandbox")
    image_asset = demo.request(
        "5. Generate an image from it",
        "POST",
        f"/api/boxes/{box['id']}/generate/",
        expect=201,
        json={
            "prompt": "The same scene at golden hour, watercolor",
            "ai_model_id": by_name[IMAGE_MODEL]["id"],
            "parent_asset_id": upload["id"],
            "generation_config": {"image_size": "16:9"},
        },
    )
    image_asset = demo.follow("5. Generate an image from it", image_asset["id"])
    video = demo.request(
        "6. Generate a video from that image",
        "POST",
        f"/api/boxes/{box['id']}/generate/",
        expect=201,
        json={
            "prompt": "Beautiful cinematic movement",
            "ai_model_id": by_name[VIDEO_MODEL]["id"],
            "parent_asset_id": image_asset["id"],
            "generation_config": {"aspect_ratio": "16:9", "resolution": "720p", "duration": "8"},
        },
    )
    video = demo.follow("6. Generate a video from that image", video["id"])
    step = "7. img2img on your own GPU server (ComfyUI): the source's size is kept"
    local_asset = demo.request(
        step,
        "POST",
        f"/api/boxes/{box['id']}/generate/",
        expect=201,
        json={
            "prompt": "The same scene in snow",
            "ai_model_id": local[LOCAL_MODEL]["id"],
            "parent_asset_id": upload["id"],
            "generation_config": {"steps": 20},
        },
    )
    local_asset = demo.follow(step, local_asset["id"])
    if (local_asset["width"], local_asset["height"]) != (upload["width"], upload["height"]):
        raise DemoFailed(
            f"{step}: the result is {local_asset['width']}×{local_asset['height']}, "
            f"the source {upload['width']}×{upload['height']}"
        )
    out(f"  → seed {local_asset['generation_config']['seed']} stored: send generation_config back to repeat it")
    return {"upload": upload, "image": image_asset, "video": video, "local": local_asset}
