"""``otel-sidecar`` command line: run, validate, print-config."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import logging
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from agent import __version__
from agent.config.loader import AgentConfig, load_path
from agent.config.schema import ConfigInvalid
from agent.exporters._helper.queue_volumes import oversubscribed_queue_volumes

EXIT_OK = 0
EXIT_INVALID_CONFIG = 1
EXIT_START_FAILED = 2
# 3 (agent.app.EXIT_FORCED): a second SIGTERM or SIGINT during the flush made the agent exit without it.


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "run"
    config = _load(args.config)
    if config is None:
        return EXIT_INVALID_CONFIG
    if command == "validate":
        source = args.config or "default config"
        problems = _build_problems(config) if args.check_files else []
        if len(problems) == 1:
            print(f"{source}: cannot start: {problems[0]}", file=sys.stderr)
        elif problems:
            listed = "".join(f"\n  {problem}" for problem in problems)
            print(f"{source}: cannot start ({len(problems)} problems):{listed}", file=sys.stderr)
        if problems:
            return EXIT_INVALID_CONFIG
        for path in config.unused_components():
            print(f"{source}: warning: {path}: defined but used by no pipeline (it does nothing)", file=sys.stderr)
        for problem in oversubscribed_queue_volumes(config) if args.check_files else []:
            print(f"{source}: warning: {problem}", file=sys.stderr)
        print(f"{source}: valid" + (", and its files and queue directories are usable" if args.check_files else ""))
        return EXIT_OK
    if command == "print-config":
        print(yaml.safe_dump(config.effective(), sort_keys=False), end="")
        return EXIT_OK
    return _run(config, args.config)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otel-sidecar", description="OTLP telemetry sidecar for LLM orchestrators.")
    parser.add_argument("--version", action="version", version=f"otel-sidecar {__version__}")
    config_help = "config file (default: the packaged default config)"
    # Before or after the command: `otel-sidecar --config X` runs, as `otelcol --config X` does.
    parser.add_argument("--config", "-c", help=config_help)
    commands = parser.add_subparsers(dest="command")
    for name, text in (
        ("run", "run the agent (the default command)"),
        ("validate", "check a config; exit 1 listing every problem"),
        ("print-config", "print the effective config with defaults filled in and secrets masked"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--config", "-c", help=config_help, default=argparse.SUPPRESS)
        if name == "validate":
            sub.add_argument(
                "--check-files",
                action="store_true",
                help="also build the pipelines as a start does, reading the TLS files the config names (run it "
                "where they are: in the pod, not in CI)",
            )
    return parser


def _build_problems(config: AgentConfig) -> list[str]:
    """What building ``config``'s pipelines and admin endpoint finds, as a start would: files the config names
    (TLS certificates and keys) missing or unusable, and directories that could not be made. Nothing binds or
    starts. The pipelines are built as one graph, which stops at its first failing component; the admin
    endpoint and each directory are checked whatever that found, so one run lists what it can."""
    from agent.app import ADMIN_TLS_PATH
    from agent.pipeline.graph import Graph
    from agent.server_tls import load_server_tls
    from agent.telemetry.selfmetrics import SelfMetrics

    problems: list[str] = []
    try:
        Graph(config, SelfMetrics())
    except ConfigInvalid as exc:  # found only when the graph is built (a cycle through connectors)
        problems += [str(error) for error in exc.errors]
    except Exception as exc:  # the messages name the setting and the file
        problems.append(str(exc))
    try:
        load_server_tls(config.service.telemetry.admin.tls, ADMIN_TLS_PATH)
    except Exception as exc:
        problems.append(str(exc))
    return problems + _directory_problems(config)


def _directory_problems(config: AgentConfig) -> list[str]:
    """The directories an exporter makes at start (with their parents) and writes in that it could not: a
    persistent queue's (``<storage.directory>/<exporter id>``) or the ``file`` exporter's ``path``."""
    from agent.exporters._helper.persistent_queue import queue_directory
    from agent.exporters.file import FileExporterConfig

    problems: list[str] = []
    for cid, component in config.exporters.items():
        if isinstance(component.config, FileExporterConfig):
            target = Path(component.config.path)
            problem = _directory_problem(target)
            if problem is not None:
                problems.append(f"exporters.{cid}.path: {target} {problem}")
        storage = getattr(getattr(component.config, "sending_queue", None), "storage", None)
        root = getattr(storage, "directory", "")
        if not root:
            continue
        target = queue_directory(root, cid)
        problem = _directory_problem(target)
        if problem is not None:
            problems.append(f"exporters.{cid}.sending_queue.storage.directory: {target} {problem}")
    return problems


def _directory_problem(target: Path) -> str | None:
    """Why ``target`` could not be made (with its parents) and written in, or None. The permissions are asked,
    then a directory is made and removed there: root may write anywhere by permissions, and still not in /proc
    or on a read-only volume."""
    existing = target
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
    except OSError as exc:  # a parent that may not be searched
        return f"cannot be reached: {exc.strerror or exc}"
    problem = "is not a writable directory" if existing == target else f"cannot be made in {existing}"
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return problem
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".otel-sidecar-check-", dir=existing))
    except OSError as exc:
        return f"{problem}: {exc.strerror or exc}"
    return None


def _load(path: str | None) -> AgentConfig | None:
    try:
        return load_path(path)
    except ConfigInvalid as exc:
        source = path or "default config"
        print(f"{source}: invalid configuration ({len(exc.errors)} problem(s)):", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return None


def raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard one, as Go programs (the Collector) do at start: each
    connection a sender or a scraper holds is a descriptor, and 1024 is soon reached on a port the network can
    reach. Returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _run(config: AgentConfig, path: str | None) -> int:
    from agent.app import Agent
    from agent.telemetry.logs import configure

    logs = config.service.telemetry.logs
    logger = configure(logs.level, logs.format)
    raise_open_file_limit()

    async def serve() -> None:
        await Agent(config, load_config=lambda: load_path(path)).run()

    # Not asyncio.run: on exit it waits, without limit, for every thread of the default executor, so one file
    # read, write or fsync blocked on a hung disk or a full FIFO would keep the pod alive until SIGKILL.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="otel-sidecar-io")
    loop.set_default_executor(executor)
    code = EXIT_OK
    try:
        loop.run_until_complete(serve())
    except ConfigInvalid as exc:  # found only when the graph is built (a cycle through connectors)
        logger.error("invalid configuration", extra={"errors": [str(e) for e in exc.errors]})
        code = EXIT_INVALID_CONFIG
    except (OSError, RuntimeError) as exc:
        logger.error("agent failed to start", extra={"error": str(exc)})
        code = EXIT_START_FAILED
    except Exception as exc:  # a component refusing its settings: a bug in validation, so keep the traceback
        logger.exception("agent failed to start", extra={"error": f"{type(exc).__name__}: {exc}"})
        code = EXIT_START_FAILED
    finally:
        _close(loop, executor)
    stuck = _threads_still_blocked(EXECUTOR_GRACE_SECONDS)
    if stuck:
        logger.error(
            "exiting without waiting for blocked calls (a file read, write or fsync)", extra={"threads": stuck}
        )
        logging.shutdown()
        os._exit(code)
    return code


EXECUTOR_GRACE_SECONDS = 2.0


def _close(loop: asyncio.AbstractEventLoop, executor: concurrent.futures.Executor) -> None:
    """What ``asyncio.run`` does on exit, except waiting for the executor's threads."""
    try:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        asyncio.set_event_loop(None)
        loop.close()


def _threads_still_blocked(grace: float) -> list[str]:
    """Names of non-daemon threads (the interpreter would wait for them at exit) still alive after ``grace``."""
    deadline = time.monotonic() + grace
    while True:
        alive = [t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)
