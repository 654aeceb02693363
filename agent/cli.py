"""``otel-sidecar`` command line: run, validate, print-config."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import yaml

from agent import __version__
from agent.config.loader import AgentConfig, load_path
from agent.config.schema import ConfigInvalid

EXIT_OK = 0
EXIT_INVALID_CONFIG = 1
EXIT_START_FAILED = 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "run"
    config = _load(args.config)
    if config is None:
        return EXIT_INVALID_CONFIG
    if command == "validate":
        print(f"{args.config or 'default config'}: valid")
        return EXIT_OK
    if command == "print-config":
        print(yaml.safe_dump(config.effective(), sort_keys=False), end="")
        return EXIT_OK
    return _run(config)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otel-sidecar", description="OTLP telemetry sidecar for LLM orchestrators.")
    parser.add_argument("--version", action="version", version=f"otel-sidecar {__version__}")
    commands = parser.add_subparsers(dest="command")
    for name, text in (
        ("run", "run the agent (the default command)"),
        ("validate", "check a config; exit 1 listing every problem"),
        ("print-config", "print the effective config with defaults filled in and secrets masked"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--config", "-c", help="config file (default: the packaged default config)")
    parser.set_defaults(config=None)
    return parser


def _load(path: str | None) -> AgentConfig | None:
    try:
        return load_path(path)
    except ConfigInvalid as exc:
        source = path or "default config"
        print(f"{source}: invalid configuration ({len(exc.errors)} problem(s)):", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return None


def _run(config: AgentConfig) -> int:
    from agent.app import Agent
    from agent.telemetry.logs import configure

    logs = config.service.telemetry.logs
    logger = configure(logs.level, logs.format)

    async def serve() -> None:
        await Agent(config).run()

    try:
        asyncio.run(serve())
    except (OSError, RuntimeError) as exc:
        logger.error("agent failed to start", extra={"error": str(exc)})
        return EXIT_START_FAILED
    return EXIT_OK
