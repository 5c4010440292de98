import time

from celery.exceptions import TimeoutError as CeleryTimeout
from django.core.management.base import BaseCommand, CommandError

from apps.generations.tasks import ping


class Command(BaseCommand):
    help = "Send a task through the broker to a worker and back; prints the round-trip latency."

    def add_arguments(self, parser):
        parser.add_argument("--timeout", type=float, default=10.0)

    def handle(self, *args, **options):
        started = time.monotonic()
        try:
            echoed = ping.delay(started).get(timeout=options["timeout"])
        except CeleryTimeout as exc:
            raise CommandError(
                f"No answer within {options['timeout']:g} s: is a Celery worker running on this broker? "
                "(make run starts one; or: celery -A config worker)"
            ) from exc
        except Exception as exc:  # broker or result backend unreachable: say which, in words
            raise CommandError(f"Celery round trip failed: {exc.__class__.__name__}: {exc}") from exc
        if echoed != started:
            raise CommandError(f"The worker answered {echoed!r}, expected {started!r}")
        self.stdout.write(self.style.SUCCESS(f"Celery OK: round trip {(time.monotonic() - started) * 1000:.0f} ms"))
