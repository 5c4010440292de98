"""Genbox settings: the one place that reads the environment.

Every integration is switched on by a variable and has an embedded default that needs no server, so a
newcomer can run the project with one command:

- ``DATABASE_URL``              unset → SQLite under ``var/``
- ``CELERY_BROKER_URL``         unset → kombu's filesystem transport under ``var/broker``
- ``AWS_STORAGE_BUCKET_NAME``   unset → local files under ``var/media``

Bad values raise ``ImproperlyConfigured`` naming the variable. README.md lists every variable.
"""

from pathlib import Path
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

BACKEND_DIR = Path(__file__).resolve().parent.parent
BASE_DIR = BACKEND_DIR.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
env.read_env(BASE_DIR / ".env")  # optional; real environment variables win


def _env_positive_int(name: str, default: int) -> int:
    return _env_positive(name, default, env.int, "a whole number")


def _env_positive_float(name: str, default: float) -> float:
    return _env_positive(name, default, env.float, "a number")


def _env_positive(name, default, read, kind: str):
    try:
        value = read(name, default=default)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be {kind}, got {env.str(name)!r}") from exc
    if value <= 0:
        raise ImproperlyConfigured(f"{name} must be greater than 0, got {value}")
    return value


def _env_bool(name: str, default: bool) -> bool:
    raw = env.str(name, default="").strip().lower()
    if raw == "":
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {raw!r}")


# --- Core ------------------------------------------------------------------------------------------

DEBUG = _env_bool("DEBUG", default=False)


def _secret_key() -> str:
    key = env.str("SECRET_KEY", default="")
    if key:
        return key
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set (a long random string) when DEBUG is off. "
            "For local development set DEBUG=true and a throw-away key is generated under var/."
        )
    # Development only: a random key kept on disk so sessions survive restarts.
    from django.core.management.utils import get_random_secret_key

    key_file = VAR_DIR / "dev-secret-key"
    if not key_file.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        key_file.write_text(get_random_secret_key())
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
# localhost stays allowed so that health checks from inside the host or container always get through.
ALLOWED_HOSTS = [*env.list("ALLOWED_HOSTS", default=[]), "localhost", "127.0.0.1", "[::1]"]

PUBLIC_BASE_URL = env.str("PUBLIC_BASE_URL", default="").rstrip("/")
if PUBLIC_BASE_URL and urlsplit(PUBLIC_BASE_URL).scheme not in {"http", "https"}:
    raise ImproperlyConfigured(f"PUBLIC_BASE_URL must start with http:// or https://, got {PUBLIC_BASE_URL!r}")
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[PUBLIC_BASE_URL] if PUBLIC_BASE_URL else [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "storages",
    "apps.boxes",
    "apps.assets",
    "apps.ai_providers",
    "apps.ai_providers.providers.kie",
    "apps.ai_providers.providers.comfyui",
    "apps.ai_providers.providers.a1111",
    "apps.ai_providers.providers.kandinsky",
    "apps.generations",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database --------------------------------------------------------------------------------------

_database_url = env.str("DATABASE_URL", default="") or f"sqlite:///{VAR_DIR / 'genbox.sqlite3'}"
if urlsplit(_database_url).scheme not in environ.Env.DB_SCHEMES:
    raise ImproperlyConfigured(
        f"DATABASE_URL must be a database URL such as postgres://user:password@host:5432/name, got scheme "
        f"{urlsplit(_database_url).scheme!r}"
    )
DATABASES = {"default": env.db_url_config(_database_url)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    # The API and the worker write at the same time: WAL lets readers through, IMMEDIATE + a timeout makes
    # writers queue instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static files and media storage ------------------------------------------------------------------

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"  # filled by `manage.py collectstatic` (the Docker image does it)
try:
    STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise warns on every start when it is missing
except OSError:
    pass
WHITENOISE_USE_FINDERS = True  # serve app static files (admin, API docs) even before collectstatic
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(VAR_DIR / "media")))

AWS_STORAGE_BUCKET_NAME = env.str("AWS_STORAGE_BUCKET_NAME", default="")
USE_S3 = bool(AWS_STORAGE_BUCKET_NAME)

if USE_S3:
    from boto3.s3.transfer import TransferConfig

    AWS_S3_ENDPOINT_URL = env.str("AWS_S3_ENDPOINT_URL", default="") or None
    AWS_ACCESS_KEY_ID = env.str("AWS_ACCESS_KEY_ID", default="") or None
    AWS_SECRET_ACCESS_KEY = env.str("AWS_SECRET_ACCESS_KEY", default="") or None
    AWS_S3_REGION_NAME = env.str("AWS_S3_REGION_NAME", default="") or None
    AWS_S3_CUSTOM_DOMAIN = env.str("AWS_S3_CUSTOM_DOMAIN", default="") or None
    # Where clients reach the bucket when that differs from where the backend does (MinIO in compose).
    AWS_S3_PUBLIC_ENDPOINT_URL = env.str("AWS_S3_PUBLIC_ENDPOINT_URL", default="") or None
    _s3_options = {
        "bucket_name": AWS_STORAGE_BUCKET_NAME,
        "endpoint_url": AWS_S3_ENDPOINT_URL,
        "access_key": AWS_ACCESS_KEY_ID,
        "secret_key": AWS_SECRET_ACCESS_KEY,
        "region_name": AWS_S3_REGION_NAME,
        "custom_domain": AWS_S3_CUSTOM_DOMAIN,
        # Private bucket: objects get no ACL; readers get presigned URLs unless a CDN domain is set.
        "default_acl": None,
        "querystring_auth": AWS_S3_CUSTOM_DOMAIN is None,
        "querystring_expire": _env_positive_int("AWS_QUERYSTRING_EXPIRE", 3600),
        # Keys are random (uuid4), so they never clash: skip the HEAD request S3Storage makes to check.
        "file_overwrite": True,
        "addressing_style": env.str("AWS_S3_ADDRESSING_STYLE", default="") or None,
        "signature_version": "s3v4",
        # Uploads stream in 8 MB parts, one at a time, in the worker's own thread: a 1 GB result costs the
        # worker one part of memory, and a small one no thread pool.
        "transfer_config": TransferConfig(multipart_chunksize=8 * 1024 * 1024, use_threads=False),
    }
    MEDIA_STORAGE = {"BACKEND": "apps.assets.storage.S3Storage", "OPTIONS": _s3_options}
else:
    MEDIA_STORAGE = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(MEDIA_ROOT), "base_url": MEDIA_URL},
    }

STORAGES = {
    "default": MEDIA_STORAGE,
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- Uploads -----------------------------------------------------------------------------------------

# Every upload goes to a temporary file on disk, never into memory, and is cut off at the size limit.
FILE_UPLOAD_HANDLERS = ["apps.assets.uploads.LimitedTemporaryFileUploadHandler"]
GENBOX_UPLOAD_MAX_BYTES = _env_positive_int("GENBOX_UPLOAD_MAX_BYTES", 500 * 1024 * 1024)
GENBOX_IMAGE_MAX_SIDE = _env_positive_int("GENBOX_IMAGE_MAX_SIDE", 4096)
FILE_UPLOAD_TEMP_DIR = env.str("FILE_UPLOAD_TEMP_DIR", default="") or None

# --- Generation lifecycle (apps/generations/lifecycle.py explains each) ---------------------------------

GENBOX_SWEEP_INTERVAL = _env_positive_int("GENBOX_SWEEP_INTERVAL", 30)
GENBOX_SWEEP_GRACE = _env_positive_int("GENBOX_SWEEP_GRACE", 120)
GENBOX_SUBMIT_LEASE_SECONDS = _env_positive_int("GENBOX_SUBMIT_LEASE_SECONDS", 180)
GENBOX_STORE_LEASE_SECONDS = _env_positive_int("GENBOX_STORE_LEASE_SECONDS", 1800)
GENBOX_POLL_ERROR_LIMIT = _env_positive_int("GENBOX_POLL_ERROR_LIMIT", 10)
GENBOX_UNREACHABLE_SECONDS = _env_positive_int("GENBOX_UNREACHABLE_SECONDS", 600)
GENBOX_SAFETY_POLL_SECONDS = _env_positive_int("GENBOX_SAFETY_POLL_SECONDS", 30)
GENBOX_RESULT_MAX_BYTES = _env_positive_int("GENBOX_RESULT_MAX_BYTES", 5 * 1024**3)
GENBOX_RESULT_MAX_SIDE = _env_positive_int("GENBOX_RESULT_MAX_SIDE", 16384)
GENBOX_SOURCE_URL_EXPIRE = _env_positive_int("GENBOX_SOURCE_URL_EXPIRE", 24 * 3600)
# Beat sends a batch task this often; each submits up to GENBOX_POLL_BATCH due generations of asynchronous
# providers, then polls as many, asking their providers with GENBOX_POLL_CONCURRENCY threads at once.
GENBOX_POLL_TICK_SECONDS = _env_positive_float("GENBOX_POLL_TICK_SECONDS", 1.0)
GENBOX_POLL_BATCH = _env_positive_int("GENBOX_POLL_BATCH", 200)
GENBOX_POLL_CONCURRENCY = _env_positive_int("GENBOX_POLL_CONCURRENCY", 16)
# Results are downloaded and saved by tasks on this queue, so large transfers never hold polls back.
GENBOX_STORE_QUEUE = env.str("GENBOX_STORE_QUEUE", default="store")
# Providers that answer synchronously (AUTOMATIC1111, the Kandinsky service) hold a worker for the whole
# generation; their submissions go to this queue, served by workers with one slot per GPU
# (``celery -A config worker -Q gpu --concurrency 1``). A provider's ``settings.queue`` overrides it.
GENBOX_GPU_QUEUE = env.str("GENBOX_GPU_QUEUE", default="gpu")
# How long such a submission may wait for its turn on the GPU before it is given up.
GENBOX_GPU_QUEUE_WAIT_SECONDS = _env_positive_int("GENBOX_GPU_QUEUE_WAIT_SECONDS", 3600)
# Where setup_kandinsky (and the compose stack) finds the Kandinsky 2.2 service (services/kandinsky/).
KANDINSKY_SERVICE_URL = env.str("KANDINSKY_SERVICE_URL", default="http://localhost:8002")

# --- REST API ----------------------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "config.api.Pagination",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "config.api.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Genbox API",
    "DESCRIPTION": "Boxes of media assets, uploads and AI generation through any provider.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "AssetStatusEnum": "apps.assets.models.Asset.Status",
        "AssetTypeEnum": "apps.assets.models.Asset.AssetType",
        "AssetSourceEnum": "apps.assets.models.Asset.Source",
    },
}

# --- Celery ------------------------------------------------------------------------------------------

BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or "filesystem://localhost/"
if CELERY_BROKER_URL.startswith("filesystem://"):
    for sub in ("queue", "processed", "control"):
        (BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
    _default_result_backend = f"file://{VAR_DIR / 'celery-results'}"
    (VAR_DIR / "celery-results").mkdir(parents=True, exist_ok=True)
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 5, "socket_timeout": 10}
    _default_result_backend = CELERY_BROKER_URL if CELERY_BROKER_URL.startswith(("redis://", "rediss://")) else ""
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default="") or _default_result_backend or None
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SOFT_TIME_LIMIT = 300
CELERY_TASK_TIME_LIMIT = 360
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fixup closes the database connection around every task unless told to reuse it this many
# times; workers reuse it like the web does instead (config/celery.py: CONN_MAX_AGE, CONN_HEALTH_CHECKS).
CELERY_DB_REUSE_MAX = 1_000_000
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE = {
    "generation-sweep": {"task": "genbox.generation.sweep", "schedule": float(GENBOX_SWEEP_INTERVAL)},
    "generation-run-due": {
        "task": "genbox.generation.run_due",
        "schedule": GENBOX_POLL_TICK_SECONDS,
        "options": {"expires": max(5.0, 5 * GENBOX_POLL_TICK_SECONDS)},
    },
}
# Countdown tasks (submission retries) and long stores wait in Redis unacknowledged; redelivery must not
# come before the longest of them.
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] = GENBOX_STORE_LEASE_SECONDS + 600

# --- Logging -----------------------------------------------------------------------------------------

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # botocore at DEBUG prints request headers, signatures included.
        "botocore": {"level": "WARNING"},
        "boto3": {"level": "WARNING"},
        "urllib3": {"level": "WARNING"},
        # One INFO line per HTTP request drowns everything else out (polls, callbacks, demo steps).
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
    },
}

# --- Production hardening ----------------------------------------------------------------------------

if not DEBUG:
    SESSION_COOKIE_SECURE = _env_bool("SECURE_COOKIES", default=PUBLIC_BASE_URL.startswith("https://"))
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if _env_bool("BEHIND_TLS_PROXY", False) else None
