"""The Kandinsky 2.2 service (``services/kandinsky/``): one synchronous ``POST /generate`` answering a PNG.

The source image of img2img goes inline as base64 (``<<image_base64>>``); the service keeps its size. The
seed it used comes back in ``X-Seed``. Optional Bearer auth with the provider's API key.
"""

import httpx

from apps.ai_providers.contract import ProviderError, Succeeded, SynchronousAdapter, out_of_memory_hint
from apps.ai_providers.http import error_detail, send, status_error

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The service's 503 while it has no models, and its reason while they are still loading.
MODELS_NOT_LOADED = "Models are not loaded:"
LOADING = "loading is in progress"


class KandinskyAdapter(SynchronousAdapter):
    label = "Kandinsky"

    def run(self, model, body: dict, *, timeout: float) -> Succeeded:
        response = send(
            self.label,
            "POST",
            self.url(model.api_endpoint or "/generate"),
            json=body,
            headers=self.bearer_headers(),
            timeout=httpx.Timeout(10.0, read=timeout, write=60.0, pool=10.0),
        )
        detail = error_detail(response) if response.status_code != 200 else ""
        if response.status_code == 503 and detail.startswith(MODELS_NOT_LOADED) and LOADING not in detail:
            # The load failed (not still running): waiting will not help until someone fixes it and POSTs /reload.
            raise ProviderError(
                f"{self.label}: the service has no models ({detail}); fix that and POST /reload", retryable=False
            )
        if response.status_code != 200:
            raise status_error(self.label, response, out_of_memory_hint(detail), what="the generation", sent=True)
        if not response.content.startswith(PNG_SIGNATURE):
            kind = response.headers.get("Content-Type", "no Content-Type")
            raise ProviderError(
                f"{self.label}: the service answered {kind} that is not a PNG ({len(response.content)} bytes)",
                retryable=False,
            )
        details = {}
        seed = response.headers.get("X-Seed", "")
        if seed.isdigit():
            details["seed"] = int(seed)
        return Succeeded(content=response.content, details=details)

    def check_connection(self) -> str:
        response = send(self.label, "GET", self.url("/health"), headers=self.bearer_headers(), timeout=10.0)
        if response.status_code != 200:
            raise status_error(self.label, response, error_detail(response), what="the health check")
        try:
            health = response.json()
        except ValueError as exc:
            raise ProviderError(f"{self.label}: /health did not answer JSON", retryable=True) from exc
        if health.get("status") != "healthy" or not health.get("models_loaded"):
            raise ProviderError(
                f"{self.label}: the service is up but not ready (status {health.get('status')!r}, "
                f"models loaded: {health.get('models_loaded')}); POST /reload or see its log",
                retryable=True,
            )
        busy = ", busy" if health.get("busy") else ""
        return f"Kandinsky 2.2 service ready on {health.get('device', '?')}{busy}"
