"""The Celery application. Workers start with ``celery -A config worker`` (the Procfile's ``worker``)."""

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("genbox")
# Every Celery setting lives in config/settings.py under the CELERY_ prefix.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.task_prerun.connect
@signals.task_postrun.connect
def _close_old_database_connections(sender=None, **kwargs) -> None:
    """Treat each task as Django treats a request: keep the database connection for the next one, unless it
    broke or outlived ``CONN_MAX_AGE`` (``CONN_HEALTH_CHECKS`` checks it before reuse). Celery's own habit,
    a new connection for every task, is switched off by ``CELERY_DB_REUSE_MAX``. An eager task runs inside its
    caller, whose connection (and transaction) is not the task's to close."""
    from django.db import close_old_connections

    if sender is not None and getattr(sender.request, "is_eager", False):
        return
    close_old_connections()
