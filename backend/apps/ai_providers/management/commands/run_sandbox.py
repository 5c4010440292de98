import signal
import threading

from django.core.management.base import BaseCommand

from ._sandbox import load_sandbox


class Command(BaseCommand):
    help = (
        "Run local emulators of the providers' protocols (Kie.ai, ComfyUI, AUTOMATIC1111, Kandinsky service) "
        "until interrupted. See also setup_sandbox."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--kie-port", type=int, help="default: 8700")
        parser.add_argument("--comfyui-port", type=int, help="default: 8701")
        parser.add_argument("--a1111-port", type=int, help="default: 8702")
        parser.add_argument("--kandinsky-port", type=int, help="default: 8703")
        parser.add_argument("--task-seconds", type=float, default=4.0, help="How long each generation takes.")
        parser.add_argument("--rate-limit", type=int, default=20, help="New Kie tasks per 10 s (0: no limit).")
        parser.add_argument("--webhook-hmac-key", default=None, help="Sign Kie callbacks with this key.")
        parser.add_argument(
            "--public-url",
            default=None,
            help="How others reach the Kie sandbox, for result URLs (e.g. http://sandbox:8700).",
        )

    def handle(self, *args, **options):
        sandbox = load_sandbox()
        from sandbox.a1111 import A1111Emulator
        from sandbox.comfyui import ComfyUIEmulator
        from sandbox.kandinsky import KandinskyEmulator
        from sandbox.kie import DIRECTIVES, KieEmulator

        for kind, port in sandbox.DEFAULT_PORTS.items():
            options[f"{kind}_port"] = options[f"{kind}_port"] or port
        host, seconds = options["host"], options["task_seconds"]
        emulators = [
            (
                "Kie.ai",
                KieEmulator(
                    host=host,
                    port=options["kie_port"],
                    api_key=sandbox.KIE_API_KEY,
                    task_seconds=seconds,
                    rate_limit=options["rate_limit"] or None,
                    webhook_hmac_key=options["webhook_hmac_key"],
                    public_base_url=options["public_url"],
                ),
                f"API key '{sandbox.KIE_API_KEY}'",
            ),
            ("ComfyUI", ComfyUIEmulator(host=host, port=options["comfyui_port"], task_seconds=seconds), "no auth"),
            (
                "AUTOMATIC1111",
                A1111Emulator(host=host, port=options["a1111_port"], task_seconds=seconds, auth=sandbox.A1111_AUTH),
                f"Basic auth {':'.join(sandbox.A1111_AUTH)}",
            ),
            (
                "Kandinsky service",
                KandinskyEmulator(host=host, port=options["kandinsky_port"], task_seconds=seconds),
                "no auth; the service's own app from services/kandinsky/, on a fake engine",
            ),
        ]
        for label, emulator, auth in emulators:
            emulator.start()
            self.stdout.write(f"{label} sandbox on {emulator.base_url} ({auth})")
        self.stdout.write(
            "Register them with: python manage.py setup_sandbox"
            + "".join(
                f" --{flag}-url {emulator.base_url}"
                for flag, (_, emulator, _) in zip(("kie", "comfyui", "a1111", "kandinsky"), emulators, strict=True)
            )
        )
        self.stdout.write("Failure modes, put in a prompt (Kie.ai; the local servers take [[fail]], [[oom]],")
        self.stdout.write("[[malformed]] and [[slow:S]]):")
        for directive, meaning in DIRECTIVES.items():
            self.stdout.write(f"  [[{directive}]]  {meaning}")
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        stop.wait()
        for _, emulator, _ in emulators:
            emulator.stop()
        self.stdout.write("Sandbox stopped.")
