"""Settings fail early and by name on bad configuration."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRINT_DATABASE_ENGINE = (
    "import django; django.setup(); from django.conf import settings; print(settings.DATABASES['default']['ENGINE'])"
)


def load_settings(**env_overrides) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DATABASE_URL", "DEBUG"}}
    env.update(env_overrides)
    env["PYTHONPATH"] = str(ROOT / "backend")
    return subprocess.run(
        [sys.executable, "-c", PRINT_DATABASE_ENGINE],
        env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def test_production_without_secret_key_refuses_to_start():
    result = load_settings(DEBUG="false")

    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DEBUG", "maybe"),
        ("GENBOX_UPLOAD_MAX_BYTES", "lots"),
        ("GENBOX_IMAGE_MAX_SIDE", "0"),
        ("GENBOX_POLL_TICK_SECONDS", "often"),
        ("GENBOX_POLL_TICK_SECONDS", "-1"),
        ("DATABASE_URL", "nosuchdb://x"),
        ("PUBLIC_BASE_URL", "example.com"),
    ],
)
def test_bad_values_name_the_variable(variable, value):
    result = load_settings(**{"SECRET_KEY": "x", variable: value})

    assert result.returncode != 0
    assert variable in result.stderr.splitlines()[-1]


def test_database_url_selects_the_engine():
    result = load_settings(SECRET_KEY="x", DATABASE_URL="postgres://u@127.0.0.1:5432/db")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "django.db.backends.postgresql"
