# Genbox images. The default (last) target, `production`, runs the API (gunicorn), the Celery worker and beat:
# the Django project only. `sandbox` adds the fake provider servers for `docker compose --profile sandbox`;
# it is never deployed. Neither image holds the tests.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app/backend \
    DJANGO_SETTINGS_MODULE=config.settings

WORKDIR /app

RUN groupadd --system --gid 1000 genbox \
    && useradd --system --uid 1000 --gid genbox --home-dir /app --shell /usr/sbin/nologin genbox

COPY requirements.txt .
RUN pip install -r requirements.txt

COPY --chown=genbox:genbox manage.py Procfile ./
COPY --chown=genbox:genbox backend ./backend

# Static files (admin, API docs) are collected at build time; the throw-away key is only for this step.
RUN SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput \
    && mkdir -p /app/var/beat \
    && chown -R genbox:genbox /app/var


# The sandbox: the project plus sandbox/ and the Kandinsky service's HTTP side (run on a fake engine, no torch).
FROM base AS sandbox

COPY requirements-sandbox.txt .
RUN pip install -r requirements-sandbox.txt
COPY --chown=genbox:genbox sandbox ./sandbox
COPY --chown=genbox:genbox services/kandinsky/main.py services/kandinsky/fake_engine.py ./services/kandinsky/

USER genbox
EXPOSE 8700 8701 8702 8703
CMD ["python", "manage.py", "run_sandbox", "--host", "0.0.0.0"]


FROM base AS production

USER genbox

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/api/health/', timeout=4).status == 200 else 1)"

CMD ["gunicorn", "config.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3", "--timeout", "120", "--access-logfile", "-"]
