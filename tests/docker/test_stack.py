"""The whole stack on a real Docker engine: build, `up -d`, texts out, restart, `down`/`up`.

It drives docker-compose exactly as an operator would, under its own project name with its own
env file, and always ends with `down -v`. Outside CI it skips (with the reason) only when no
Docker engine can be started; with CI=true it never skips.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT.parent / "shared" / "docker" / "engine.sh"
APP_SERVICES = ("celery_worker", "celery_beat", "api")
SMS_LINE = re.compile(r"SMS to \+[0-9*]+ from ")
TICK_SECONDS = 5

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true, so the container test must run, but: {reason}")
    pytest.skip(reason)


def _ensure_engine() -> list[str]:
    """Start the engine and its base images (engine.sh is idempotent); return the compose command.

    Where engine.sh is not around (another checkout layout), an engine already running will do.
    """
    if ENGINE.exists():
        started = subprocess.run(
            ["bash", str(ENGINE)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if started.returncode != 0:
            _unavailable(
                f"{ENGINE} could not start a Docker engine:\n{started.stdout}{started.stderr}"
            )
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "info"], capture_output=True).returncode:
        _unavailable(f"no Docker engine is running and {ENGINE} is not there to start one")
    plugin = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
    if plugin.returncode == 0:
        return [docker, "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    _unavailable("neither `docker compose` nor `docker-compose` is installed")
    raise AssertionError("unreachable")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, check: Callable[[], Any], timeout: float, every: float = 2.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def _docker(*args: str, stderr: int = subprocess.PIPE) -> str:
    done = subprocess.run(
        ["docker", *args], stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=120
    )
    if done.returncode != 0:
        raise AssertionError(f"`docker {' '.join(args)}` exited {done.returncode}: {done.stderr}")
    return done.stdout


class Stack:
    """One compose project: every command carries its project name and env file."""

    def __init__(
        self, compose: list[str], project: str, env_file: Path, passwords: dict[str, str]
    ) -> None:
        self.project = project
        self.env_file = env_file
        self.passwords = passwords  # what the env file sets (empty: generated ones)
        self.base = [*compose, "--project-name", project, "--env-file", str(env_file)]
        self.timings: dict[str, float] = {}
        self.health_report = ""

    def run(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*self.base, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"`{' '.join(args)}` exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done

    def timed(self, label: str, *args: str, timeout: float = 600) -> None:
        start = time.monotonic()
        self.run(*args, timeout=timeout)
        self.timings[label] = time.monotonic() - start

    # Polling goes through the docker CLI, by compose's labels: a compose call costs a second or
    # two of Python start-up on 2 cores, and the checks below poll a lot.
    def container_ids(self, service: str) -> list[str]:
        labels = {
            "com.docker.compose.project": self.project,
            "com.docker.compose.service": service,
            "com.docker.compose.oneoff": "False",
        }
        filters = [arg for k, v in labels.items() for arg in ("--filter", f"label={k}={v}")]
        return _docker("ps", "--all", "--quiet", *filters).split()

    def state(self, service: str) -> list[dict[str, Any]]:
        """``docker inspect``'s State of each of the service's containers, plus RestartCount."""
        ids = self.container_ids(service)
        if not ids:
            return []
        out = _docker("inspect", "--format", "{{.RestartCount}} {{json .State}}", *ids)
        states = []
        for line in out.splitlines():
            restarts, _, state = line.partition(" ")
            states.append({**json.loads(state), "RestartCount": int(restarts)})
        return states

    def healthy(self, *services: str) -> bool:
        """True when every container of ``services`` is healthy; fails fast on a crash loop."""
        not_healthy = []
        for service in services:
            states = self.state(service)
            for s in states:
                if s["RestartCount"] >= 3:
                    raise AssertionError(
                        f"{service} keeps restarting ({s['RestartCount']} restarts):\n"
                        + self.run("logs", "--no-color", "--tail=40", service, check=False).stdout
                    )
            status = [s.get("Health", {}).get("Status", s["Status"]) for s in states]
            if not states or any(st != "healthy" for st in status):
                not_healthy.append(f"{service}: {', '.join(status) or 'no container'}")
        self.health_report = "; ".join(not_healthy)
        return not not_healthy

    def wait_healthy(self, *services: str, timeout: float = 120) -> None:
        try:
            _wait(f"{', '.join(services)} to be healthy", lambda: self.healthy(*services), timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc} ({self.health_report})") from None

    def migrate_done(self) -> bool:
        states = self.state("migrate")
        if states and states[0]["Status"] == "exited":
            assert states[0]["ExitCode"] == 0, "migrate failed:\n" + self.logs("migrate")
            return True
        return False

    def logs(self, service: str) -> str:
        """Everything the service's containers wrote (Celery logs to stderr)."""
        return "".join(
            _docker("logs", container, stderr=subprocess.STDOUT)
            for container in self.container_ids(service)
        )

    def sms_lines(self) -> list[str]:
        return [line for line in self.logs("celery_worker").splitlines() if SMS_LINE.search(line)]

    def secret(self, name: str) -> str:
        """A file of the `secrets` volume, as the app (uid 1000) reads it."""
        worker = self.container_ids("celery_worker")[0]
        return _docker("exec", worker, "cat", f"/run/reminders-secrets/{name}")

    def ledger(self, status: str) -> list[dict[str, Any]]:
        """The ledger's rows in ``status``, as `reminders messages --json` prints them."""
        worker = self.container_ids("celery_worker")[0]
        out = _docker("exec", worker, "reminders", "messages", "--status", status, "--json")
        rows: list[dict[str, Any]] = json.loads(out)
        return rows


@contextmanager
def stack_under_test(tmp_path: Path, *, passwords: bool = True) -> Iterator[Stack]:
    """``passwords``: the env file sets POSTGRES_PASSWORD and REDIS_PASSWORD (they win);
    without, the `secrets` service generates them, as on a fresh clone."""
    engine_started = time.monotonic()
    compose = _ensure_engine()
    engine_seconds = time.monotonic() - engine_started
    port = _free_port()
    env_file = tmp_path / "stack.env"
    given = (
        {
            "POSTGRES_PASSWORD": secrets.token_urlsafe(16),
            "REDIS_PASSWORD": secrets.token_urlsafe(16),
        }
        if passwords
        else {}
    )
    env_file.write_text(
        "\n".join(
            [
                *(f"{name}={value}" for name, value in given.items()),
                "SMS_PROVIDER=console",
                "REMINDER_DEMO=1",
                f"REMINDER_TICK_SECONDS={TICK_SECONDS}",
                "LOG_FORMAT=text",
                "LOG_LEVEL=INFO",
                f"WEBHOOK_PORT={port}",
                # The api refuses to start without what it needs to check Twilio's signatures.
                f"TWILIO_AUTH_TOKEN={secrets.token_hex(16)}",
                f"WEBHOOK_BASE_URL=http://127.0.0.1:{port}",
                "REMINDERS_IMAGE=reminders:e2e",
                "REMINDERS_FLOWER_IMAGE=reminders-flower:e2e",
                "REMINDERS_PROMETHEUS_IMAGE=reminders-prometheus:e2e",
                f"PROMETHEUS_PORT={_free_port()}",
                "",
            ]
        )
    )
    stack = Stack(compose, f"reminders_e2e_{os.getpid()}", env_file, given)
    stack.timings["engine.sh"] = engine_seconds
    try:
        yield stack
    except BaseException:
        print("---- last logs of the stack under test ----")
        print(stack.run("logs", "--no-color", "--tail=150", check=False).stdout)
        raise
    finally:
        stack.run("down", "-v", "--remove-orphans", "--timeout", "30", check=False, timeout=180)
        print("timings (s):", {k: round(v, 1) for k, v in stack.timings.items()})


def _no_root_processes(stack: Stack) -> None:
    """`top` lists every process of every running app container; none may be root."""
    out = stack.run("top", *APP_SERVICES).stdout
    rows = [line.split() for line in out.splitlines()]
    processes = [r for r in rows if len(r) > 2 and r[1].isdigit()]  # UID PID PPID ... CMD
    assert len(processes) >= len(APP_SERVICES), out
    root = [" ".join(r) for r in processes if r[0] in ("root", "0")]
    assert not root, "processes running as root:\n" + "\n".join(root)


def test_stack_sends_reminders_and_survives_restarts(tmp_path: Path) -> None:
    with stack_under_test(tmp_path) as stack:
        stack.timed("build", "build")
        started = time.monotonic()
        stack.timed("up", "up", "-d")

        # migrate ran to completion; worker, beat and api report healthy.
        _wait("migrate to finish", stack.migrate_done, 120)
        assert "demo" in stack.logs("migrate")
        stack.wait_healthy(*APP_SERVICES)
        stack.timings["healthy"] = time.monotonic() - started

        # The demo organization's texts go out with no manual step, within two minutes of `up -d`.
        _wait(
            "the demo's texts in the worker's log",
            stack.sms_lines,
            120 - (time.monotonic() - started),
        )
        stack.timings["first text"] = time.monotonic() - started
        _wait(
            "the day's sends to settle",
            lambda: not stack.ledger("pending") and not stack.ledger("sending"),
            60,
        )
        sent = stack.ledger("sent")
        assert sent, "the demo sent nothing"
        assert len(stack.sms_lines()) == len(sent), (
            "the worker logged a different number of texts than the ledger holds"
        )

        # The passwords the env file sets win over generated ones.
        assert f":{stack.passwords['POSTGRES_PASSWORD']}@" in stack.secret("database_url")
        assert stack.secret("redis_password") == stack.passwords["REDIS_PASSWORD"]

        # Non-root everywhere.
        assert stack.run("exec", "-T", "celery_worker", "id", "-u").stdout.strip() == "1000"
        _no_root_processes(stack)

        # The manual trigger finds nothing left to send: nothing goes out twice.
        run = stack.run("exec", "-T", "celery_worker", "reminders", "run", "--json")
        result = json.loads(run.stdout)
        assert result["sent"] == 0, result
        assert len(stack.ledger("sent")) == len(sent)

        # restart_celery.sh: exit 0, both healthy again, no row left claimed.
        start = time.monotonic()
        restarted = subprocess.run(
            [
                "./restart_celery.sh",
                "--timeout",
                "120",
                "--",
                "--project-name",
                stack.project,
                "--env-file",
                str(stack.env_file),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        stack.timings["restart_celery.sh"] = time.monotonic() - start
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert stack.healthy("celery_worker", "celery_beat")
        # SIGTERM went through the init to Celery, which finished its work before exiting.
        assert "Warm shutdown" in stack.logs("celery_worker")
        assert stack.ledger("sending") == []

        # `down` then `up -d` keeps the ledger (named volume) and sends no duplicate.
        stack.timed("down", "down", "--timeout", "30")
        stack.timed("up again", "up", "-d")
        _wait("migrate to finish again", stack.migrate_done, 120)
        stack.wait_healthy(*APP_SERVICES)
        time.sleep(3 * TICK_SECONDS)  # several beat ticks: time enough for any duplicate to go out
        assert stack.sms_lines() == [], "texts went out again after down/up"
        assert len(stack.ledger("sent")) == len(sent)
        assert stack.ledger("sending") == []

        # The api answers on its published port.
        port = int(stack.run("port", "api", "8080").stdout.strip().rsplit(":", 1)[1])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200


def test_first_start_generates_secrets_kept_by_down_and_gone_with_down_v(tmp_path: Path) -> None:
    """No password in the env file (a fresh clone): the `secrets` service makes them, the stack
    comes up healthy and sends the demo; `down`/`up` keeps them, `down -v` takes them away."""
    with stack_under_test(tmp_path, passwords=False) as stack:
        stack.timed("build", "build")
        stack.timed("up", "up", "-d")
        _wait("migrate to finish", stack.migrate_done, 120)
        stack.wait_healthy(*APP_SERVICES)
        _wait("the demo's texts in the worker's log", stack.sms_lines, 120)
        first = stack.secret("database_url")
        generated = first.split("@", 1)[0].rsplit(":", 1)[1]
        assert len(generated) >= 40, "not a strong generated password"
        assert len(stack.secret("redis_password")) >= 40
        assert generated not in stack.logs("secrets")

        stack.timed("down", "down", "--timeout", "30")
        stack.timed("up again", "up", "-d")
        _wait("migrate to finish again", stack.migrate_done, 120)
        stack.wait_healthy(*APP_SERVICES)
        assert stack.secret("database_url") == first

        stack.timed("down -v", "down", "-v", "--timeout", "30")
        stack.timed("up after down -v", "up", "-d")
        _wait("migrate to finish on fresh volumes", stack.migrate_done, 120)
        stack.wait_healthy(*APP_SERVICES)
        assert stack.secret("database_url") != first


def _prometheus_api(stack: Stack, path: str, **params: str) -> Any:
    """The data of one answer of the stack's Prometheus HTTP API, on its published port."""
    port = int(stack.run("port", "prometheus", "9090").stdout.strip().rsplit(":", 1)[1])
    url = f"http://127.0.0.1:{port}/api/v1/{path}?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return answer["data"]


def _prometheus(stack: Stack, query: str) -> list[dict[str, Any]]:
    """An instant query's result vector."""
    result: list[dict[str, Any]] = _prometheus_api(stack, "query", query=query)["result"]
    return result


def test_monitoring_profile_scrapes_the_api_and_every_worker(tmp_path: Path) -> None:
    """`--profile monitoring up -d prometheus` with two workers: Prometheus finds both through
    the compose service's DNS name, reads their counters and the api's gauges, and has the
    alert rules loaded with none firing on the healthy demo stack."""
    with stack_under_test(tmp_path) as stack:
        stack.timed("build", "--profile", "monitoring", "build", "prometheus", *APP_SERVICES)
        stack.timed(
            "up",
            "--profile",
            "monitoring",
            "up",
            "-d",
            "--scale",
            "celery_worker=2",
            "prometheus",
            *APP_SERVICES,
        )
        stack.wait_healthy(*APP_SERVICES, timeout=180)
        assert len(stack.container_ids("celery_worker")) == 2
        _wait("the demo's texts in the worker's log", stack.sms_lines, 120)
        _wait(
            "Prometheus to scrape two workers and the api",
            lambda: (
                sorted((r["metric"]["job"], r["value"][1]) for r in _prometheus(stack, "up"))
                == [("reminders-api", "1"), ("reminders-worker", "1"), ("reminders-worker", "1")]
            ),
            90,
        )
        _wait(
            "the workers' sent counter",
            lambda: _prometheus(stack, 'sum(reminders_texts_total{outcome="sent"}) > 0'),
            60,
        )
        rows = _prometheus(stack, 'sum(reminders_ledger_rows{organization="demo"})')
        assert rows and float(rows[0]["value"][1]) > 0, rows
        groups = _prometheus_api(stack, "rules", type="alert")["groups"]
        alerts = sorted(rule["name"] for group in groups for rule in group["rules"])
        rules = yaml.safe_load((ROOT / "docker/prometheus/alerts.yml").read_text())["groups"]
        assert alerts == sorted(r["alert"] for group in rules for r in group["rules"])
        assert "RemindersEventsDead" in alerts
        # Healthy demo stack: nothing firing, and nothing pending once every target is seen
        # (an `absent` worker before the first DNS lookup is pending for one evaluation).
        _wait("no alert pending or firing", lambda: _prometheus(stack, "ALERTS") == [], 60)
        # The image runs as its own user, not root.
        assert stack.run("exec", "-T", "prometheus", "id", "-u").stdout.strip() == "990"
