"""Command line: `python -m callbridge` serves callbridge; `python -m callbridge --help` lists the commands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import signal
import sys
from collections.abc import Callable


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m callbridge",
        description="callbridge: a telephony voice-bot bridge. Settings come from the environment and .env "
        "(see .env.example).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve the HTTP/WebSocket API (the default command)")
    serve.add_argument("--host", help="override HOST")
    serve.add_argument("--port", type=int, help="override PORT")
    serve.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by the supervisor (callbridge.workers)
    serve.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)  # where the supervisor hears it is ready
    call = commands.add_parser(
        "call", help="simulate a Twilio phone call: say a WAV (or --say TEXT) into /telephone/handler",
        description="Plays the caller's audio into the Twilio handler in real time as Twilio would (webhook, "
        "connected, start, media, dtmf, stop; marks echoed once heard; buffer emptied on clear): waits for a "
        "greeting to end, speaks, waits for the reply to be heard, then presses --dtmf digits one by one, each "
        "answer awaited, and stays on the line --hold seconds before hanging up. Prints a timeline and each "
        "reply's latency from the end of the caller's speech (trailing silence in the WAV excluded).",
    )
    call.add_argument("wav", nargs="?", help="what the caller says (or --say): any WAV (PCM 8/16/24/32-bit, "
                      "float, µ-law or A-law; any rate; stereo is mixed down)")
    call.add_argument("--say", metavar="TEXT", help="say TEXT with espeak-ng instead of a WAV")
    call.add_argument("--url", help="base URL of callbridge (default http://127.0.0.1:PORT, PORT from the "
                      "environment or .env, else 8000)")
    call.add_argument("--out", help="write what the caller heard to this WAV (8 kHz)")
    call.add_argument("--dtmf", default="", help="digits to press once the reply has been heard, e.g. 12#")
    call.add_argument("--wait", type=float, default=15.0,
                      help="seconds to wait for a greeting to end, and for the reply (default %(default)s)")
    call.add_argument("--dtmf-wait", type=float, default=3.0,
                      help="seconds to wait for each digit's answer (default %(default)s)")
    call.add_argument("--hold", type=float, default=0.5, metavar="SECONDS",
                      help="stay on the line, silent, this long after the last answer before hanging up, e.g. to "
                      "hear the bot's idle re-prompts (IDLE_SECONDS) and hang-up (default %(default)s)")
    call.add_argument("--talk-over", action="store_true",
                      help="speak 0.3 s into the call, over any greeting, instead of waiting for it to end")
    call.add_argument("--auth-token", default="", help="sign requests with this Twilio auth token")
    call.add_argument("--public-url", default="", help="PUBLIC_URL the server validates signatures against")
    dial = commands.add_parser(
        "dial", help="place an outbound call through the running service (POST /calls, with API_TOKEN)",
        description="Asks the running service to have Twilio dial TO; once answered, the call gets the bot, "
        "told it is outbound. Prints the call's CallSid.",
    )
    dial.add_argument("to", help="the number to call, E.164 (+15550100)")
    dial.add_argument("--from", dest="from_", help="the caller id, E.164 (default TWILIO_FROM_NUMBER)")
    dial.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                      help="a parameter for the bot (CallInfo.parameters); may be repeated")
    dial.add_argument("--machine-detection", choices=["Enable", "DetectMessageEnd"],
                      help="Twilio's answering-machine detection; the bot gets its verdict (CallInfo.answered_by)")
    dial.add_argument("--url", help="base URL of callbridge (default http://127.0.0.1:PORT)")
    return parser


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop (libuv: socket I/O and timers in C) unless EVENT_LOOP=asyncio; None is asyncio's default."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def _stop_while_starting(signum: int, frame: object) -> None:
    raise SystemExit(0)


def tell_ready(fd: int | None) -> Callable[[], None] | None:
    """What tells the supervisor, on the pipe it gave this worker, that the worker serves (callbridge.workers)."""
    if fd is None:
        return None

    def ready() -> None:
        with contextlib.suppress(BrokenPipeError):  # the supervisor is gone: nobody left to tell
            os.write(fd, b"ready")
        os.close(fd)

    return ready


def main(argv: list[str] | None = None) -> int:
    # Until the event loop takes signals over (draining), SIGTERM while starting stops cleanly: a supervisor or
    # an orchestrator stopping a process that has not finished loading is not a crash.
    signal.signal(signal.SIGTERM, _stop_while_starting)
    args = build_parser().parse_args(argv)
    command = args.command or "serve"
    if command == "call":
        from callbridge.simulator import main as simulate

        return simulate(args)
    if command == "dial":
        from callbridge.dial import main as dial

        return dial(args)
    from callbridge.settings import SettingsError, load_settings

    overrides = {k: v for k in ("host", "port") if (v := getattr(args, k, None)) is not None}
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        print(f"callbridge: {exc}", file=sys.stderr)
        return 2
    if command == "serve":
        from callbridge.bots.loader import BotLoadError, load_bot
        from callbridge.logs import configure_logging
        from callbridge.serve import ServeError, serve

        try:
            bot_factory = load_bot(settings.bot, settings.bot_path)  # checked here, loaded once
        except BotLoadError as exc:
            print(f"callbridge: invalid settings:\n  BOT: {exc}", file=sys.stderr)
            return 2
        if settings.vad_backend == "torch" and importlib.util.find_spec("torch") is None:
            print("callbridge: invalid settings:\n  VAD_BACKEND: torch is not installed; install it with "
                  "`pip install 'callbridge[torch]'` (`make torch` in a checkout), or use VAD_BACKEND=onnx",
                  file=sys.stderr)
            return 2
        if settings.end_of_turn == "model":
            from callbridge.core.end_of_turn import model_file

            try:
                model_file()
            except RuntimeError as exc:
                print(f"callbridge: END_OF_TURN=model cannot start: {exc} (pip install pipecat-ai, or END_OF_TURN="
                      "silence)", file=sys.stderr)
                return 2
        worker = getattr(args, "worker", None)
        configure_logging(settings.log_level, settings.log_format, worker)
        if settings.workers > 1 and worker is None:
            from callbridge.workers import supervise

            return supervise(settings)
        try:
            with asyncio.Runner(loop_factory=event_loop_factory(settings.event_loop)) as runner:
                runner.run(serve(settings, bot_factory, worker or 0, tell_ready(getattr(args, "ready_fd", None))))
        except ServeError as exc:
            print(f"callbridge: {exc}", file=sys.stderr)
            return 1
        return 0
    raise AssertionError(f"unhandled command {command}")


if __name__ == "__main__":
    sys.exit(main())
