"""The README's configuration table lists every variable the settings read."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
READ_CALL = re.compile(
    r'(?:env\.(?:str|int|float|list|bool|db)|_env_positive_int|_env_positive_float|_env_bool)\(\s*"([A-Z][A-Z0-9_]+)"'
)


def test_every_environment_variable_is_documented_in_the_readme():
    settings_source = (ROOT / "backend/config/settings.py").read_text()
    readme = (ROOT / "README.md").read_text()

    read = set(READ_CALL.findall(settings_source))
    assert len(read) > 20, "the pattern no longer finds the settings' variables"
    undocumented = sorted(name for name in read if f"`{name}`" not in readme)
    assert undocumented == []


def test_every_variable_in_env_example_is_documented():
    readme = (ROOT / "README.md").read_text()
    names = re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), flags=re.MULTILINE)

    assert names
    assert sorted(name for name in names if f"`{name}`" not in readme) == []
