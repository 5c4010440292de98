"""Generation pipeline benchmarks. Run through bench/run.sh, which provides the services and environment.

Modes:
  inflight    N generations submitted at once (or evenly over --ramp seconds: N in flight when the first ends),
              each taking S seconds at the provider: completion lag after the provider finished (p50/p95),
              provider requests per generation, worker CPU time. --warm runs some first, unmeasured, so the
              model has the history a model in use has.
  large       one video result of SIZE bytes: the worker's peak memory growth while it streams it to S3.
  throughput  N generations at an instant provider: generations per second from the first API request to the
              last COMPLETED asset.
  crash       N generations while the worker is killed with SIGKILL K times: every generation must end, none
              may be submitted twice, every completed one must have its file.

The emulator runs inside this process (threads), so its record of every request and of when each task
finished at the provider is at hand. The API, the worker and beat are the Procfile's lines, separate processes.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from scripts import procfile

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "var" / "bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fresh_database() -> None:
    import psycopg2
    from django.conf import settings

    db = settings.DATABASES["default"]
    admin = psycopg2.connect(host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{db["NAME"]}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{db["NAME"]}"')
    admin.close()
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True)


def ensure_bucket() -> None:
    import boto3
    from django.conf import settings

    s3 = boto3.client(
        "s3",
        endpoint_url=settings.AWS_S3_ENDPOINT_URL,
        aws_access_key_id=settings.AWS_ACCESS_KEY_ID,
        aws_secret_access_key=settings.AWS_SECRET_ACCESS_KEY,
        region_name=settings.AWS_S3_REGION_NAME,
    )
    if settings.AWS_STORAGE_BUCKET_NAME not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=settings.AWS_STORAGE_BUCKET_NAME)


class Process:
    """A Procfile process (web, worker, beat) in its own session, logging to var/bench/<name>.log."""

    def __init__(self, name: str, env: dict[str, str]):
        LOGS.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log = (LOGS / f"{name}.log").open("w")
        self.popen = procfile.start(name, env=env, output=self.log)

    def pids(self) -> list[int]:
        """This process and every process in its session (a worker's pool children)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(stat[3]) == self.popen.pid:  # process group id
                    found.append(int(entry.name))
        return found

    def cpu_seconds(self) -> float:
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.pids():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += sum(int(value) for value in stat[11:15])  # utime stime cutime cstime
        return total / ticks

    def rss_by_pid(self) -> dict[int, int]:
        sizes = {}
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        sizes[pid] = int(line.split()[1]) * 1024
            except OSError:
                continue
        return sizes

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)


class Stack:
    """Emulator (in this process) and the Procfile's web, worker (2 processes) and beat, on a fresh database."""

    def __init__(
        self,
        *,
        callbacks: bool,
        task_seconds: float,
        rate_limit: int | None = None,
        concurrency: int = 2,
        signed: bool = False,
    ):
        from sandbox.kie import KieEmulator

        fresh_database()
        ensure_bucket()
        self.hmac_key = "bench-webhook-key" if signed else None
        self.emulator = KieEmulator(
            api_key="bench-key", task_seconds=task_seconds, rate_limit=rate_limit, webhook_hmac_key=self.hmac_key
        ).start()
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        env = {**os.environ}
        if callbacks:
            env["PUBLIC_BASE_URL"] = self.api_url
        else:
            env.pop("PUBLIC_BASE_URL", None)
        from config.celery import app

        app.connection_for_write().default_channel.client.flushdb()
        env.update(
            PORT=str(self.api_port),
            WEB_CONCURRENCY="2",
            WORKER_CONCURRENCY=str(concurrency),
            CELERY_BEAT_SCHEDULE=str(LOGS / "beat-schedule"),
        )
        self.api = Process("web", env)
        self.worker = Process("worker", env)
        self.beat = Process("beat", env)
        self.env = env
        self._wait_for_api()
        self.token, self.box_id, self.models = self._setup_data()

    def _wait_for_api(self) -> None:
        for _ in range(120):
            try:
                if httpx.get(f"{self.api_url}/api/health/", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the API did not come up; see {LOGS / 'web.log'}")

    def _setup_data(self):
        from django.contrib.auth import get_user_model
        from django.core.management import call_command
        from rest_framework.authtoken.models import Token

        from apps.ai_providers.models import AIModel
        from apps.boxes.models import Box

        signing = ["--webhook-hmac-key", self.hmac_key] if self.hmac_key else []
        call_command(
            "setup_kie_ai",
            "--api-key",
            "bench-key",
            "--base-url",
            self.emulator.base_url,
            *signing,
            stdout=open(os.devnull, "w"),
        )
        user = get_user_model().objects.create_user("bench")
        box = Box.objects.create(owner=user, name="bench")
        return Token.objects.create(user=user).key, box.pk, {m.name: m.pk for m in AIModel.objects.all()}

    def generate(self, client: httpx.Client, model: str, prompt: str) -> int:
        response = client.post(
            f"{self.api_url}/api/boxes/{self.box_id}/generate/",
            json={"prompt": prompt, "ai_model_id": self.models[model]},
            headers={"Authorization": f"Token {self.token}"},
        )
        response.raise_for_status()
        return response.json()["id"]

    def generate_many(self, model: str, count: int, prompt: str, *, ramp: float = 0.0) -> list[int]:
        """``count`` generations through the API: as fast as it takes them, or spread evenly over ``ramp`` s."""
        started = time.monotonic()

        def one(client: httpx.Client, n: int) -> int:
            pause = started + ramp * n / count - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            return self.generate(client, model, f"{prompt} {n}")

        with httpx.Client(timeout=60) as client, ThreadPoolExecutor(16) as pool:
            return list(pool.map(lambda n: one(client, n), range(count)))

    def wait_done(self, ids: list[int], timeout: float) -> None:
        from apps.assets.models import Asset

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = Asset.objects.filter(pk__in=ids).exclude(stage=Asset.Stage.DONE).count()
            if left == 0:
                return
            time.sleep(0.5)
        raise RuntimeError(f"{left} generations unfinished after {timeout:.0f} s")

    def kill_worker(self) -> None:
        """SIGKILL the worker and its pool children (an OOM kill, a lost machine), then start a new one."""
        os.killpg(self.worker.popen.pid, signal.SIGKILL)
        self.worker.popen.wait()
        self.worker = Process("worker", self.env)

    def close(self) -> None:
        for process in (self.beat, self.worker, self.api):
            process.stop()
        self.emulator.stop()


def warm_up(stack: "Stack", count: int, *, timeout: float) -> None:
    """Give the model a history first, as a model in use has (the poll schedule learns from it); these
    generations are not measured."""
    if count:
        stack.wait_done(stack.generate_many("Nano Banana", count, "warm-up"), timeout=timeout)


def cpu_by_component(stack: "Stack") -> dict[str, float]:
    """CPU seconds used so far by each part of the stack (children included), read from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")

    def usage(pid: int) -> float:
        # Own time only: a server's cutime would charge it for children reaped now but busy long before.
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return sum(int(value) for value in stat[11:13]) / ticks

    def matching(word: str) -> float:
        total = 0.0
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if word in (entry / "cmdline").read_bytes().decode(errors="replace"):
                        total += usage(int(entry.name))
                except OSError:
                    continue
        return total

    times = os.times()
    return {
        "worker": stack.worker.cpu_seconds(),
        "api": stack.api.cpu_seconds(),
        "emulator+bench": times.user + times.system,
        "s3 (moto)": matching("moto_server"),
        "postgres": matching("postgres"),
        "redis": matching("redis-server"),
    }


def cpu_report(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
    return {name: round((after[name] - before[name]) * 1000 / count, 1) for name in after}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def inflight(args) -> dict:
    from apps.assets.models import Asset

    stack = Stack(
        callbacks=args.callbacks,
        task_seconds=args.seconds,
        rate_limit=args.rate_limit,
        concurrency=args.concurrency,
        signed=args.signed,
    )
    try:
        warm_up(stack, args.warm, timeout=args.seconds * 4 + 600)
        first_request = len(stack.emulator.requests)
        cpu_before = stack.worker.cpu_seconds()
        components_before = cpu_by_component(stack)
        started = time.monotonic()
        ids = stack.generate_many("Nano Banana", args.count, "inflight", ramp=args.ramp)
        submitted_in = time.monotonic() - started
        stack.wait_done(ids, timeout=args.seconds * 4 + 600)
        cpu = stack.worker.cpu_seconds() - cpu_before
        assets = list(Asset.objects.filter(pk__in=ids))
        by_task = {task.task_id: task for task in stack.emulator.tasks.values()}
        lags = []
        for asset in assets:
            task = by_task[asset.external_task_id]
            provider_end = task.created_at + (task.ends_at - task.started)
            lags.append(asset.finished_at.timestamp() - provider_end)
        requests = [r for r in stack.emulator.requests[first_request:] if r.kind in ("submit", "poll", "file")]
        rate_limited = [r for r in requests if r.kind == "submit" and r.code == 429]
        polls = [r for r in requests if r.kind == "poll"]
        return {
            "mode": "inflight",
            "callbacks": ("signed" if args.signed else "unsigned") if args.callbacks else False,
            "warm_up_generations": args.warm,
            "count": args.count,
            "sent_over_s": args.ramp,
            "provider_seconds": args.seconds,
            "completed": sum(a.status == Asset.Status.COMPLETED for a in assets),
            "failed": sum(a.status == Asset.Status.FAILED for a in assets),
            "api_submit_seconds": round(submitted_in, 1),
            "lag_p50_s": round(percentile(lags, 0.5), 2),
            "lag_p95_s": round(percentile(lags, 0.95), 2),
            "lag_max_s": round(max(lags), 2),
            "provider_requests_per_generation": round(len(requests) / len(assets), 2),
            "polls_per_generation": round(len(polls) / len(assets), 2),
            "polls_per_10s_of_provider_time": round(len(polls) / len(assets) / (args.seconds / 10), 2),
            "submits_rate_limited_429": len(rate_limited),
            "seconds_to_last_completed": round(time.monotonic() - started, 1),
            "callbacks_received": sum(1 for a in assets if by_task[a.external_task_id].callback_status == 200),
            "worker_cpu_seconds": round(cpu, 1),
            "worker_cpu_ms_per_generation": round(cpu * 1000 / len(assets), 1),
            "cpu_ms_per_generation_by_component": cpu_report(components_before, cpu_by_component(stack), len(assets)),
        }
    finally:
        stack.close()


def large(args) -> dict:
    from apps.assets.models import Asset

    stack = Stack(callbacks=True, task_seconds=1.0)
    try:
        time.sleep(2)  # let the pool settle before taking the baseline
        baseline = stack.worker.rss_by_pid()
        peak = dict(baseline)
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                for pid, rss in stack.worker.rss_by_pid().items():
                    peak[pid] = max(peak.get(pid, 0), rss)
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        with httpx.Client(timeout=60) as client:
            asset_id = stack.generate(client, "Veo 3.1 Fast text-to-video", f"large [[size:{args.size}]]")
        stack.wait_done([asset_id], timeout=1800)
        elapsed = time.monotonic() - started
        stop.set()
        sampler.join()
        asset = Asset.objects.get(pk=asset_id)
        growth = {pid: peak[pid] - baseline.get(pid, peak[pid]) for pid in peak}
        return {
            "mode": "large",
            "status": asset.status,
            "error": asset.error_message,
            "bytes": asset.file_size,
            "seconds": round(elapsed, 1),
            "mb_per_s": round(asset.file_size / elapsed / 1e6, 1) if asset.file_size else 0,
            "baseline_rss_mb": {pid: round(v / 2**20, 1) for pid, v in baseline.items()},
            "peak_rss_mb": {pid: round(v / 2**20, 1) for pid, v in peak.items()},
            "max_growth_mb": round(max(growth.values()) / 2**20, 1),
        }
    finally:
        stack.close()


def throughput(args) -> dict:
    from apps.assets.models import Asset

    stack = Stack(callbacks=args.callbacks, task_seconds=0.0, signed=args.signed)
    try:
        warm_up(stack, args.warm, timeout=600)
        cpu_before = stack.worker.cpu_seconds()
        components_before = cpu_by_component(stack)
        started = time.time()
        ids = stack.generate_many("Nano Banana", args.count, "fast")
        api_done = time.time()
        stack.wait_done(ids, timeout=1800)
        assets = list(Asset.objects.filter(pk__in=ids))
        last = max(a.finished_at.timestamp() for a in assets)
        cpu = stack.worker.cpu_seconds() - cpu_before
        tasks = [t for t in stack.emulator.tasks.values() if t.task_id in {a.external_task_id for a in assets}]
        return {
            "mode": "throughput",
            "callbacks": ("signed" if args.signed else "unsigned") if args.callbacks else False,
            "warm_up_generations": args.warm,
            "count": args.count,
            "completed": sum(a.status == Asset.Status.COMPLETED for a in assets),
            "api_requests_per_s": round(args.count / (api_done - started), 1),
            "callbacks_received": sum(1 for t in tasks if t.callback_status == 200),
            "callback_errors": sorted({str(t.callback_error)[:80] for t in tasks if t.callback_error}),
            "seconds_first_request_to_last_completed": round(last - started, 1),
            "generations_per_s": round(args.count / (last - started), 1),
            "worker_cpu_ms_per_generation": round(cpu * 1000 / len(assets), 1),
            "cpu_ms_per_generation_by_component": cpu_report(components_before, cpu_by_component(stack), len(assets)),
        }
    finally:
        stack.close()


def crash(args) -> dict:
    """Kill -9 the worker every ``--kill-every`` seconds while ``--count`` generations run, then let the
    sweeper repair what the kills left: every generation must end, none may be submitted twice, and every
    completed one must have its file. The sweeper runs every 5 s and the leases are short here (30 s to submit,
    60 s to store), so the repair is seen within minutes."""
    from collections import Counter

    from apps.assets.models import Asset

    os.environ.update(
        GENBOX_SWEEP_INTERVAL="5",
        GENBOX_SWEEP_GRACE="15",
        GENBOX_SUBMIT_LEASE_SECONDS="30",
        GENBOX_STORE_LEASE_SECONDS="60",
    )
    stack = Stack(callbacks=args.callbacks, task_seconds=args.seconds, concurrency=args.concurrency)
    try:
        started = time.monotonic()
        ids: list[int] = []
        in_flight_at_kills: Counter = Counter()
        kills = 0
        with ThreadPoolExecutor(1) as sender:
            sending = sender.submit(stack.generate_many, "Nano Banana", args.count, "crash")
            while kills < args.kills:
                time.sleep(args.kill_every)
                stages = Asset.objects.exclude(stage=Asset.Stage.DONE).values_list("stage", flat=True)
                in_flight_at_kills.update(stages)
                stack.kill_worker()
                kills += 1
            ids = sending.result()
        stack.wait_done(ids, timeout=args.seconds * 4 + 900)
        assets = list(Asset.objects.filter(pk__in=ids))
        sent = Counter((record.json or {}).get("input", {}).get("prompt") for record in stack.emulator.submissions())
        completed = [a for a in assets if a.status == Asset.Status.COMPLETED]
        stored = {name for name in (a.file.name for a in completed) if name and a_file_exists(name)}
        return {
            "mode": "crash",
            "callbacks": args.callbacks,
            "count": args.count,
            "provider_seconds": args.seconds,
            "kills": kills,
            "stages_in_flight_at_the_kills": dict(in_flight_at_kills),
            "completed": len(completed),
            "failed": len(assets) - len(completed),
            "failures": dict(Counter(a.error_message[:100] for a in assets if a.status == Asset.Status.FAILED)),
            "submitted_twice": sum(1 for count in sent.values() if count > 1),
            "never_submitted_but_completed": sum(1 for a in completed if not sent.get(a.prompt_text)),
            # A failed generation the provider had accepted is a task paid for and lost.
            "failed_after_the_provider_accepted_it": sum(
                1 for a in assets if a.status == Asset.Status.FAILED and sent.get(a.prompt_text)
            ),
            "adopted_from_a_callback": sum(1 for a in assets if a.submitted_at and a.submitted_at == a.started_at),
            "completed_with_a_stored_file": len(stored),
            "seconds_to_last_finished": round(time.monotonic() - started, 1),
        }
    finally:
        stack.close()


def a_file_exists(name: str) -> bool:
    from django.core.files.storage import default_storage

    return default_storage.exists(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["inflight", "large", "throughput", "crash"])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0, help="provider time per generation (inflight)")
    parser.add_argument("--size", type=int, default=1_000_000_000, help="result bytes (large)")
    parser.add_argument("--no-callbacks", dest="callbacks", action="store_false")
    parser.add_argument(
        "--ramp", type=float, default=0.0, help="inflight: send the generations evenly over this many seconds"
    )
    parser.add_argument("--signed", action="store_true", help="the emulator signs its callbacks (webhook HMAC key)")
    parser.add_argument(
        "--warm", type=int, default=0, help="generations run (and not measured) first, so the model has a history"
    )
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (default: 2, as shipped)")
    parser.add_argument("--rate-limit", type=int, default=None, help="emulator: new tasks per 10 s (inflight)")
    parser.add_argument("--kills", type=int, default=10, help="crash: how many times the worker is killed")
    parser.add_argument("--kill-every", type=float, default=5.0, help="crash: seconds between kills")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    result = {"inflight": inflight, "large": large, "throughput": throughput, "crash": crash}[args.mode](args)
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    result["machine"] = f"{os.cpu_count()} cores, {memory_gib:.0f} GiB"
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
