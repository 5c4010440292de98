#!/usr/bin/env python
"""Django's command-line utility for Genbox."""

import os
import sys
from pathlib import Path

# The Django project lives in backend/: `config` (settings) and `apps.*` import from there.
sys.path.insert(0, str(Path(__file__).resolve().parent / "backend"))


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
