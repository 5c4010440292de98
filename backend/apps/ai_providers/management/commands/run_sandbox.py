import signal
import threading

from django.core.management.base import BaseCommand

from apps.ai_providers import sandbox
from apps.ai_providers.emulators.kie import DIRECTIVES, KieEmulator


class Command(BaseCommand):
    help = "Run local emulators of the providers' protocols (Kie.ai) until interrupted. See also setup_sandbox."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--kie-port", type=int, default=sandbox.KIE_DEFAULT_PORT)
        parser.add_argument("--task-seconds", type=float, default=4.0, help="How long each generation takes.")
        parser.add_argument("--rate-limit", type=int, default=20, help="New tasks per 10 s (0: no limit).")
        parser.add_argument("--webhook-hmac-key", default=None, help="Sign callbacks with this key.")
        parser.add_argument(
            "--public-url",
            default=None,
            help="How others reach this server, for result URLs (e.g. http://sandbox:8700).",
        )

    def handle(self, *args, **options):
        emulator = KieEmulator(
            host=options["host"],
            port=options["kie_port"],
            api_key=sandbox.KIE_API_KEY,
            task_seconds=options["task_seconds"],
            rate_limit=options["rate_limit"] or None,
            webhook_hmac_key=options["webhook_hmac_key"],
            public_base_url=options["public_url"],
        ).start()
        self.stdout.write(f"Kie.ai sandbox on {emulator.base_url} (API key '{sandbox.KIE_API_KEY}')")
        self.stdout.write(f"Register it with: python manage.py setup_sandbox --kie-url {emulator.base_url}")
        self.stdout.write("Failure modes, put in a prompt:")
        for directive, meaning in DIRECTIVES.items():
            self.stdout.write(f"  [[{directive}]]  {meaning}")
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        stop.wait()
        emulator.stop()
        self.stdout.write("Sandbox stopped.")
