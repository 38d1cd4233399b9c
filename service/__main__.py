"""`python -m service`: run the API, or manage API keys.

    python -m service [--host 127.0.0.1] [--port 8000]
    python -m service keys create --name NAME [--admin]
    python -m service keys ensure --name NAME [--admin] --file PATH
    python -m service keys list
    python -m service keys revoke --name NAME
"""

from __future__ import annotations

import argparse
import json
import sys

from jobs.settings import get_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service",
                                     description="Model-compression job service (API server).")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--log-level", default="info", help="uvicorn log level")
    parser.add_argument("--workers", type=int, default=1,
                        help="API processes, each on its own SO_REUSEPORT socket (jobs run in "
                        "`python -m worker`)")
    commands = parser.add_subparsers(dest="command")
    keys = commands.add_parser("keys", help="manage API keys (stored hashed in Redis)")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True, help="owner name of the key's jobs and models")
    create.add_argument("--admin", action="store_true", help="may see every owner's jobs")
    ensure = actions.add_parser(
        "ensure", help="print the key stored in --file if still valid, else create and store one")
    ensure.add_argument("--name", required=True)
    ensure.add_argument("--admin", action="store_true")
    ensure.add_argument("--file", required=True, help="where the clear key is kept (mode 600)")
    actions.add_parser("list", help="list key names (never the keys)")
    revoke = actions.add_parser("revoke", help="revoke the key with this name")
    revoke.add_argument("--name", required=True)
    return parser


def _keys(args: argparse.Namespace) -> int:
    from jobs.connection import redis_client
    from service.auth import KeyStore

    settings = get_settings()
    store = KeyStore(redis_client(settings.redis_url), settings.key_prefix)
    if args.action == "create":
        try:
            print(store.create(args.name, admin=args.admin))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    elif args.action == "ensure":
        print(_ensure_key(store, args.name, args.admin, args.file))
    elif args.action == "list":
        for entry in store.list():
            print(json.dumps(entry))
    elif args.action == "revoke":
        if not store.revoke(args.name):
            print(f"error: no key named {args.name!r}", file=sys.stderr)
            return 1
        print(f"revoked {args.name}")
    return 0


def _ensure_key(store, name: str, admin: bool, file: str) -> str:
    """For `scripts/serve`: reuse the local key across restarts, since only its hash is stored."""
    import os
    from pathlib import Path

    path = Path(file)
    if path.is_file():
        key = path.read_text().strip()
        principal = store.verify(key)
        if principal is not None and principal.name == name:
            return key
    store.revoke(name)
    key = store.create(name, admin=admin)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "keys":
        return _keys(args)
    from service.server import serve

    return serve(args.host, args.port, args.workers, args.log_level)


if __name__ == "__main__":
    sys.exit(main())
