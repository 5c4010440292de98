"""The sandbox commands' one way to reach sandbox/, which the production image leaves out."""

from django.core.management.base import CommandError


def load_sandbox():
    """The ``sandbox`` package; ``CommandError`` saying where to run the command when it is not installed here."""
    try:
        import sandbox
    except ImportError as exc:
        raise CommandError(
            "The sandbox (sandbox/) is not installed here: the production image leaves it out. Run this command "
            "in a checkout of the repository, or in the compose sandbox service "
            "(docker compose --profile sandbox exec sandbox python manage.py …)."
        ) from exc
    return sandbox
