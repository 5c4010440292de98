"""AUTOMATIC1111 / Forge WebUI: synchronous ``/sdapi/v1/*`` endpoints answering base64 images.

The model's ``api_endpoint`` says which: ``/sdapi/v1/txt2img``, ``/sdapi/v1/img2img`` (the source as
``init_images: ["<<image_base64>>"]``, an inpainting mask as ``mask: "<<mask_base64>>"``) or
``/sdapi/v1/extra-single-image`` (upscaling; answers ``image`` instead of ``images``). The seed and
parameters A1111 reports in ``info`` are kept on the asset. HTTP Basic auth when the provider's API key is
``user:password`` (A1111's ``--api-auth``).
"""

import base64
import binascii
import json

import httpx

from apps.ai_providers.contract import Failed, ProviderError, Succeeded, SynchronousAdapter, out_of_memory_hint
from apps.ai_providers.http import error_detail, send, status_error

# What of A1111's ``info`` is worth keeping: enough to reproduce and to explain the result.
INFO_KEYS = (
    "seed",
    "all_seeds",
    "subseed",
    "sampler_name",
    "scheduler",
    "steps",
    "cfg_scale",
    "width",
    "height",
    "denoising_strength",
    "sd_model_name",
    "sd_model_hash",
    "is_using_inpainting_conditioning",
    "infotexts",
)


class A1111Adapter(SynchronousAdapter):
    label = "AUTOMATIC1111"

    def _auth(self) -> tuple[str, str] | None:
        user, sep, password = (self.provider.api_key or "").partition(":")
        return (user, password) if sep else None

    def _send(self, method: str, path: str, *, timeout, **kwargs) -> httpx.Response:
        return send(self.label, method, self.url(path), auth=self._auth(), timeout=timeout, **kwargs)

    def run(self, model, body: dict, *, timeout: float) -> Succeeded | Failed:
        response = self._send(
            "POST", model.api_endpoint, json=body, timeout=httpx.Timeout(10.0, read=timeout, write=60.0, pool=10.0)
        )
        if response.status_code != 200:
            raise status_error(
                self.label, response, out_of_memory_hint(error_detail(response)), what="the generation", sent=True
            )
        try:
            answer = response.json()
        except ValueError as exc:
            snippet = response.text[:120].replace("\n", " ")
            raise ProviderError(
                f"{self.label}: unreadable answer to the generation: {snippet!r}", retryable=False
            ) from exc
        if not isinstance(answer, dict):
            return Failed(f"{self.label}: the generation answered {type(answer).__name__}, not an object")
        images = answer.get("images")
        encoded = images[0] if isinstance(images, list) and images else answer.get("image")
        if not encoded:
            return Failed(f"{self.label}: the generation answered without an image")
        try:
            content = base64.b64decode(encoded.split(",", 1)[-1], validate=True)  # "data:image/png;base64," tolerated
        except (binascii.Error, ValueError, AttributeError):
            return Failed(f"{self.label}: the image in the answer is not valid base64")
        return Succeeded(content=content, details=self._details(answer))

    @staticmethod
    def _details(answer: dict) -> dict:
        info = answer.get("info")
        if isinstance(info, str):
            try:
                info = json.loads(info)
            except ValueError:
                info = None
        details = {key: info[key] for key in INFO_KEYS if isinstance(info, dict) and key in info}
        if answer.get("html_info"):
            details["html_info"] = answer["html_info"]
        return details

    def progress(self) -> float | None:
        response = self._send("GET", "/sdapi/v1/progress", params={"skip_current_image": "true"}, timeout=5.0)
        if response.status_code != 200:
            return None
        try:
            value = float(response.json().get("progress"))
        except (ValueError, TypeError, AttributeError):
            return None
        return min(1.0, max(0.0, value))

    def check_connection(self) -> str:
        response = self._send("GET", "/sdapi/v1/options", timeout=10.0)
        if response.status_code != 200:
            raise status_error(self.label, response, error_detail(response), what="reading the options")
        try:
            checkpoint = response.json().get("sd_model_checkpoint")
        except (ValueError, AttributeError) as exc:
            raise ProviderError(f"{self.label}: /sdapi/v1/options did not answer JSON", retryable=True) from exc
        return f"AUTOMATIC1111 reachable, checkpoint: {checkpoint or 'unknown'}"

    def secrets(self) -> list[str]:
        auth = self._auth()
        return super().secrets() + ([auth[1]] if auth and auth[1] else [])
