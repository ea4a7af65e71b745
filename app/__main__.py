"""Command line: `python -m app` serves callbridge; `python -m app --help` lists the commands."""

from __future__ import annotations

import argparse
import asyncio
import sys

from app.settings import SettingsError, load_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="callbridge: a telephony voice-bot bridge. Settings come from the environment and .env "
        "(see .env.example).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve the HTTP/WebSocket API (the default command)")
    serve.add_argument("--host", help="override HOST")
    serve.add_argument("--port", type=int, help="override PORT")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "serve"
    overrides = {k: v for k in ("host", "port") if (v := getattr(args, k, None)) is not None}
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        print(f"callbridge: {exc}", file=sys.stderr)
        return 2
    if command == "serve":
        from app.server import configure_logging, serve

        configure_logging(settings.log_level)
        asyncio.run(serve(settings))
        return 0
    raise AssertionError(f"unhandled command {command}")


if __name__ == "__main__":
    sys.exit(main())
