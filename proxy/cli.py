"""Command line: parse, load settings, configure logging, run. Nothing else.

apideck-proxy                 serve (settings from APIDECK_PROXY_* / --env-file)
apideck-proxy --check-config  print the effective settings (secrets masked) and exit
apideck-proxy sim             run the built-in Apideck simulator
apideck-proxy demo            simulator + proxy + the same burst with and without the proxy
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from proxy import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apideck-proxy",
        description=(
            "Local sidecar for Apideck Unify: forwards every request unchanged and makes sure "
            "each connection's OAuth token is refreshed by exactly one validate."
        ),
        epilog="Settings are read from APIDECK_PROXY_* environment variables; see README.md.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--env-file", help="read settings from this file as well (env wins)")
    parser.add_argument("--host", help="override APIDECK_PROXY_HOST")
    parser.add_argument("--port", type=int, help="override APIDECK_PROXY_PORT")
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="print the effective settings with secrets masked; exit 1 listing every error",
    )
    sub = parser.add_subparsers(dest="command", metavar="{sim,demo}")
    from proxy.sim import cli as sim_cli

    sim_cli.add_arguments(sub.add_parser("sim", help="run the built-in Apideck simulator"))
    from proxy import demo

    demo.add_arguments(
        sub.add_parser("demo", help="show the refresh race with and without the proxy")
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "sim":
        from proxy.sim import cli as sim_cli

        return sim_cli.run(args)
    if args.command == "demo":
        from proxy import demo

        return demo.run_demo(args)
    return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    from proxy.settings import SettingsError, load_settings

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    try:
        settings = load_settings(args.env_file, **overrides)
    except SettingsError as exc:
        print("apideck-proxy: invalid settings:", file=sys.stderr)
        for line in exc.lines:
            print(f"  - {line}", file=sys.stderr)
        return 2 if not args.check_config else 1
    if args.check_config:
        print(json.dumps(settings.masked(), indent=2, sort_keys=True))
        return 0

    from proxy.log import configure_logging
    from proxy.service import run_proxy

    # The proxy's own secrets are masked literally too, wherever a line might quote them.
    held = (settings.api_key, settings.redis_url)
    configure_logging(
        settings.log_format,
        settings.log_level,
        secrets=[s.get_secret_value() for s in held if s is not None],
    )
    run_proxy(settings)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
