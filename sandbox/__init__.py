"""The sandbox: fake provider servers that speak the real wire protocols, for work without credits or GPUs.

Django-free: ``kie``, ``comfyui`` and ``a1111`` are emulators of those servers (the last two on the shared
``server``); ``kandinsky`` is the real Kandinsky service of ``services/kandinsky/`` on a fake engine. They are
started by ``manage.py run_sandbox`` and by the tests; ``manage.py setup_sandbox`` registers them as providers.
None of it ships in the production image. Sandbox providers are flagged ``is_sandbox`` (shown in the admin
and the API) and are only ever created by ``setup_sandbox``, which refuses when ``DEBUG`` is off unless told
otherwise.
"""

KIE_PROVIDER_NAME = "Kie.ai sandbox"
KIE_API_KEY = "sandbox-key"
KIE_DEFAULT_PORT = 8700

COMFYUI_PROVIDER_NAME = "ComfyUI sandbox"
COMFYUI_DEFAULT_PORT = 8701

A1111_PROVIDER_NAME = "AUTOMATIC1111 sandbox"
A1111_AUTH = ("sandbox", "sandbox-password")  # the WebUI's --api-auth, to exercise Basic auth
A1111_DEFAULT_PORT = 8702

KANDINSKY_PROVIDER_NAME = "Kandinsky sandbox"
KANDINSKY_DEFAULT_PORT = 8703

DEFAULT_PORTS = {
    "kie": KIE_DEFAULT_PORT,
    "comfyui": COMFYUI_DEFAULT_PORT,
    "a1111": A1111_DEFAULT_PORT,
    "kandinsky": KANDINSKY_DEFAULT_PORT,
}
