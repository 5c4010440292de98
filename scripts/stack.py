"""The whole local stack for a newcomer: sandbox providers, the API, a Celery worker with beat.

    python scripts/stack.py run  [--port 8000]   start it and stay up; prints the URLs and a token
    python scripts/stack.py demo [--port 8000]   start it, walk the quickstart over HTTP, stop, exit 0 / 1

The API, the worker and beat are the Procfile's ``web``, ``worker`` and ``beat``, run by honcho; the sandbox
(development only, not in the Procfile) runs beside them.

Embedded defaults (SQLite, local files under var/, the filesystem broker) unless DATABASE_URL,
CELERY_BROKER_URL or AWS_STORAGE_BUCKET_NAME say otherwise. Logs go to var/stack/.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "backend"), str(ROOT)]  # the Django project, and the sandbox package
LOGS = ROOT / "var" / "stack"
DEMO_USER, DEMO_PASSWORD = "demo", "genbox-demo"


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    def __init__(self, port: int, sandbox_ports: dict[str, int], *, echo_logs: bool):
        self.port = port
        self.sandbox_ports = sandbox_ports  # kie, comfyui, a1111, kandinsky
        self.api_url = f"http://127.0.0.1:{port}"
        self.sandbox_urls = {name: f"http://127.0.0.1:{port}" for name, port in sandbox_ports.items()}
        self.echo_logs = echo_logs
        self.processes: list[subprocess.Popen] = []
        self.env = {
            **os.environ,
            "DEBUG": os.environ.get("DEBUG", "true"),
            "PUBLIC_BASE_URL": os.environ.get("PUBLIC_BASE_URL", self.api_url),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "backend"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1",
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)]),
            "CELERY_BEAT_SCHEDULE": str(LOGS / "celerybeat-schedule"),
        }

    def manage(self, *args: str) -> None:
        subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, check=True)

    def spawn(self, name: str, args: list[str], *, echo: bool = False) -> subprocess.Popen:
        """Start a child in its own session, its output in var/stack/<name>.log (and on the terminal with ``echo``)."""
        LOGS.mkdir(parents=True, exist_ok=True)
        log = (LOGS / f"{name}.log").open("w")
        process = subprocess.Popen(
            args,
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE if echo else log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if echo:
            threading.Thread(target=_tee, args=(process.stdout, log), daemon=True).start()
        self.processes.append(process)
        return process

    def start(self) -> None:
        wanted = [(self.port, "the API")] + [(port, f"the {name} sandbox") for name, port in self.sandbox_ports.items()]
        for port, what in wanted:
            if not port_free(port):
                raise SystemExit(f"Port {port} for {what} is taken (another `make run`?). Stop it or pass --port.")
        step("Migrating the database")
        self.manage("migrate", "--noinput", "-v", "0")
        step(f"Starting the sandbox (Kie.ai, ComfyUI, AUTOMATIC1111, Kandinsky) on {self.sandbox_urls['kie']}, …")
        ports = [arg for name, port in self.sandbox_ports.items() for arg in (f"--{name}-port", str(port))]
        self.spawn("sandbox", [sys.executable, "manage.py", "run_sandbox", *ports, "--task-seconds", "3"])
        for port in self.sandbox_ports.values():
            self.wait_port(port, "the sandbox", LOGS / "sandbox.log")
        urls = [arg for name, url in self.sandbox_urls.items() for arg in (f"--{name}-url", url)]
        self.manage("setup_sandbox", *urls, "--allow-production")
        step(f"Starting the Procfile's web, worker and beat with honcho; the API on {self.api_url}")
        honcho = [
            str(Path(sys.executable).parent / "honcho"),
            "start",
            "--port",
            str(self.port),
            "web",
            "worker",
            "beat",
        ]
        self.spawn("honcho", honcho, echo=self.echo_logs)
        self.wait_port(self.port, "the API", LOGS / "honcho.log")

    def wait_port(self, port: int, what: str, log: Path, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not port_free(port):
                return
            if any(p.poll() is not None for p in self.processes):
                raise SystemExit(f"{what} did not start; see {log}")
            time.sleep(0.2)
        raise SystemExit(f"{what} did not start within {timeout:.0f} s; see {log}")

    def stop(self) -> None:
        # SIGTERM to each main process only: a Celery worker then shuts its pool down itself (a signal to the
        # whole group would kill the pool children under it). Whatever is left after 10 s is killed.
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _tee(stream, log) -> None:
    for line in iter(stream.readline, b""):
        sys.stdout.buffer.write(line)
        sys.stdout.flush()
        log.write(line.decode(errors="replace"))
        log.flush()


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def demo_user_token() -> str:
    """The demo user (password genbox-demo) and its token, created if missing."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    user, created = get_user_model().objects.get_or_create(
        username=DEMO_USER, defaults={"is_staff": True, "is_superuser": True}
    )
    if created or not user.check_password(DEMO_PASSWORD):
        user.set_password(DEMO_PASSWORD)
        user.save()
    return Token.objects.get_or_create(user=user)[0].key


def run(stack: Stack) -> int:
    stack.start()
    token = demo_user_token()
    print(
        f"""
  Genbox is running (Ctrl-C stops everything).

  API        {stack.api_url}/api/
  API docs   {stack.api_url}/api/docs/
  Admin      {stack.api_url}/admin/        user {DEMO_USER} / password {DEMO_PASSWORD}
  Token      {token}
             curl -H "Authorization: Token {token}" {stack.api_url}/api/ai-models/
  Sandbox    {", ".join(f"{name} {url}" for name, url in stack.sandbox_urls.items())}
             (emulated providers; see QUICKSTART.md for their failure modes)
  Logs       below and in var/stack/honcho.log (web, worker, beat: the Procfile's), var/stack/sandbox.log
""",
        flush=True,
    )
    try:
        stack.processes[-1].wait()
    except KeyboardInterrupt:
        pass
    return 0


def demo(stack: Stack) -> int:
    from apps.assets.media.samples import sample_png
    from sandbox.demo import DemoFailed, walk

    started = time.monotonic()
    stack.start()
    step(f"Creating the demo user ({DEMO_USER} / {DEMO_PASSWORD})")
    demo_user_token()
    step("Walking the quickstart over HTTP")
    try:
        assets = walk(stack.api_url, username=DEMO_USER, password=DEMO_PASSWORD, image=sample_png(), timeout=90)
    except DemoFailed as exc:
        print(f"\nDEMO FAILED at {exc}\nLogs: var/stack/", file=sys.stderr, flush=True)
        return 1
    from apps.assets.models import Asset

    print("\nThe assets:")
    for role, data in assets.items():
        asset = Asset.objects.get(pk=data["id"])
        print(
            f"  {role:7} asset {asset.pk}: {asset.status} {asset.mime_type} {asset.width}×{asset.height}, "
            f"{asset.file_size} bytes"
        )
        try:
            print(f"          file {os.path.relpath(asset.file.path, ROOT)}")
        except NotImplementedError:  # not local storage
            pass
        print(f"          url  {data['file_url']}")
    print(f"\nDemo finished in {time.monotonic() - started:.0f} s.")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["run", "demo"])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8000)))
    parser.add_argument(
        "--sandbox-port",
        type=int,
        default=None,
        help="first of four sandbox ports (default: 8700 for run, free for demo)",
    )
    args = parser.parse_args()
    os.chdir(ROOT)
    names = ("kie", "comfyui", "a1111", "kandinsky")
    if args.mode == "run" or args.sandbox_port:
        sandbox_ports = {name: (args.sandbox_port or 8700) + index for index, name in enumerate(names)}
    else:
        sandbox_ports = {name: free_port() for name in names}
    port = args.port if args.mode == "run" or port_free(args.port) else free_port()
    stack = Stack(port, sandbox_ports, echo_logs=args.mode == "run")
    # A plain `kill` must stop the children too: turn SIGTERM into an exit that runs the `finally` below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.update({k: v for k, v in stack.env.items() if k in ("DEBUG", "PUBLIC_BASE_URL")})
    try:
        code = run(stack) if args.mode == "run" else demo(stack)
    finally:
        step("Stopping")
        stack.stop()
    sys.exit(code)


if __name__ == "__main__":
    main()
