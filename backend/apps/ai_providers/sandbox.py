"""The sandbox: local emulators of provider protocols, registered as providers, for work without credits.

``run_sandbox`` starts the servers, ``setup_sandbox`` registers them; tests use the very same emulators.
Sandbox providers are flagged ``is_sandbox`` (shown in the admin and the API) and are only ever created by
``setup_sandbox``, which refuses when ``DEBUG`` is off unless told otherwise.
"""

KIE_PROVIDER_NAME = "Kie.ai sandbox"
KIE_API_KEY = "sandbox-key"
KIE_DEFAULT_PORT = 8700
