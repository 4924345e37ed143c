"""`modelplane-server`: the command line. With no subcommand it serves (the default models when no
`--model` is given); every flag is a `ServerSettings` field and has a `MODELPLANE_*` twin.

Subcommands are looked up in `COMMANDS` and imported only when chosen, so a light one (a future
`bench`) never pays for the server's imports, and nothing here imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any, Protocol

from pydantic import ValidationError

from modelplane_server.settings import ServerSettings

PROG = "modelplane-server"
# Settings that are deliberately not flags: a key on the command line shows up in `ps`.
ENV_ONLY = frozenset({"api_key"})


class Command(Protocol):
    def __call__(self, argv: Sequence[str]) -> int: ...


# name -> (module, function, one-line help); `serve` is the default.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": (
        "modelplane_server.cli",
        "serve_command",
        "serve the OpenAI-compatible API (default)",
    ),
    "bench": (
        "modelplane_server.loadtest.command",
        "bench_command",
        "load-test an OpenAI-compatible endpoint (imports no torch)",
    ),
    "download": (
        "modelplane_server.download",
        "download_command",
        "fetch a hub repository into a model cache directory (imports no torch)",
    ),
}


def flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    commands = "\n".join(f"  {name:<8} {help_}" for name, (_, _, help_) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve a model over an OpenAI-compatible HTTP API with continuous batching. "
        "Each flag can also be set as MODELPLANE_<FLAG> (e.g. MODELPLANE_MAX_BATCH_SIZE); "
        "flags win. The API key is read from MODELPLANE_API_KEY or --api-key-file only.",
        epilog=f"commands ({PROG} <command> --help):\n{commands}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = ServerSettings.model_construct()
    for name, field in ServerSettings.model_fields.items():
        if name in ENV_ONLY:
            continue
        default = getattr(defaults, name)
        parser.add_argument(
            flag(name),
            dest=name,
            default=argparse.SUPPRESS,  # only given flags override the environment
            metavar=name.upper(),
            help=f"{field.description} (default: {default!r}; env MODELPLANE_{name.upper()})",
        )
    return parser


def parse_settings(argv: Sequence[str]) -> ServerSettings:
    """Settings from the environment, overridden by the flags in `argv`; exits 2 on bad values."""
    parser = build_parser()
    overrides: dict[str, Any] = vars(parser.parse_args(list(argv)))
    try:
        return ServerSettings(**overrides)
    except ValidationError as error:
        problems = "; ".join(
            f"{flag(str(e['loc'][0])) if e['loc'] else 'settings'}: {e['msg']}"
            for e in error.errors()
        )
        parser.error(problems)


def serve_command(argv: Sequence[str]) -> int:
    settings = parse_settings(argv)
    from modelplane_server.http.server import run

    return run(settings)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    name = args[0] if args and args[0] in COMMANDS else "serve"
    rest = args[1:] if args and args[0] in COMMANDS else args
    module_name, function_name, _ = COMMANDS[name]
    command: Command = getattr(importlib.import_module(module_name), function_name)
    return command(rest)


if __name__ == "__main__":
    sys.exit(main())
