"""Start a Procfile process the way honcho does, for code that runs Genbox's processes itself (tests, bench/).

The command lines live in the Procfile alone; `make run` runs them with honcho. ``start`` runs one line through
``sh -c`` (so its ``${VAR:-default}`` settings work), in its own session so that the whole process group can be
signalled, with the virtual environment's ``bin`` first on ``PATH``.
"""

import os
import subprocess
import sys
from pathlib import Path
from typing import IO

from honcho.environ import parse_procfile

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = ROOT / "Procfile"


def command(name: str) -> str:
    """The Procfile's command line for process ``name``; ``KeyError`` naming it when the Procfile has none."""
    processes = parse_procfile(PROCFILE.read_text()).processes
    if name not in processes:
        raise KeyError(f"the Procfile has no '{name}' process (it has: {', '.join(processes)})")
    return processes[name]


def start(name: str, *, env: dict[str, str], output: IO | None = None) -> subprocess.Popen:
    """Start Procfile process ``name`` with ``env`` from the repository root; its output goes to ``output``."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**env, "PATH": os.pathsep.join([bin_dir, env.get("PATH", os.defpath)])}
    return subprocess.Popen(
        ["sh", "-c", f"exec {command(name)}"],
        cwd=ROOT,
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        start_new_session=True,
    )
