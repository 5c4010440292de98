#!/usr/bin/env bash
# The Kandinsky service's tests, in a virtual environment of their own (services/kandinsky/.venv): torch and
# diffusers are far too heavy for the main project's environment.
#
#   services/kandinsky/scripts/test.sh [pytest arguments]
#
# torch is installed first, on its own, so that nothing in the requirements pulls in another torch build.
# The environment is (re)installed only when a requirements file changes (their sha256 is kept in a stamp).
# If torch itself cannot be installed the tests are skipped with one line saying why, and the script exits
# 0; any other failure exits non-zero.
set -euo pipefail

service_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$service_dir"
venv="$service_dir/.venv"
python="$venv/bin/python"
stamp="$venv/.requirements.sha256"
log="$venv/pip-install.log"
torch_requirement="$(grep -E '^torch==' requirements.txt)"  # the one pin, kept in requirements.txt
torch_version="${torch_requirement#torch==}"

if [[ ! -x "$python" ]]; then
    echo "Creating $venv"
    "${PYTHON:-python3}" -m venv "$venv"
fi

wanted="$(cat requirements.txt requirements-test.txt | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ]]; then
    echo "Installing $torch_requirement, then requirements.txt and requirements-test.txt (log: $log)"
    : >"$log"
    if ! "$python" -m pip install --disable-pip-version-check "$torch_requirement" >>"$log" 2>&1; then
        reason="$(grep -E '^ERROR' "$log" | tail -n 1 | sed 's/^ERROR: //')"
        echo "SKIPPED kandinsky service tests: torch $torch_version could not be installed (${reason:-see $log})"
        exit 0
    fi
    if ! "$python" -m pip install --disable-pip-version-check -r requirements.txt -r requirements-test.txt \
        >>"$log" 2>&1; then
        tail -n 20 "$log" >&2
        echo "Installing the requirements failed; see $log" >&2
        exit 1
    fi
    echo "$wanted" >"$stamp"
fi

exec "$python" -m pytest tests -q "$@"
