"""``python main.py serve``: the OpenAI-compatible server in the foreground.

src/cli.py wires it with ``add_serve_parser(commands)`` in ``build_parser`` and
``if args.command == "serve": return run_serve(args)`` in ``main``; ``HearthError`` (insecure host, port in use,
unknown model) is printed there as one ``error:`` line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from src import settings as _settings


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    serve = subparsers.add_parser(
        "serve",
        help="serve the local models over an OpenAI-compatible HTTP API",
        description="Serve Hearth's local models at http://HOST:PORT/v1 (chat/completions, completions, models), "
        "with /health and Prometheus /metrics. Binds 127.0.0.1 by default; any other host needs an API key "
        f"(--api-key, or better the {_settings.ENV_SERVER_API_KEY} environment variable, which other users "
        "cannot read in the process list). Ctrl+C stops.",
    )
    serve.add_argument("--host", default=_settings.SERVER_DEFAULT_HOST, help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=_settings.SERVER_DEFAULT_PORT, help="port (default 8765; 0 = any free)")
    serve.add_argument("--api-key", dest="api_key", help=f"key clients must send as Bearer (or {_settings.ENV_SERVER_API_KEY})")
    serve.add_argument("--model", help="model used when a request names none, loaded at start (default: the embedded one)")
    serve.add_argument(
        "--cors-origin",
        action="append",
        dest="cors_origins",
        default=[],
        metavar="ORIGIN",
        help="allow browser pages from ORIGIN (e.g. http://localhost:3000); repeat for more; '*' for any",
    )
    serve.add_argument(
        "--max-queue", type=int, default=_settings.SERVER_MAX_QUEUE, help="requests allowed to wait for the model (more get 429)"
    )
    return serve


def run_serve(args: argparse.Namespace) -> int:
    from src.errors import UnknownModelError
    from src.server.app import create_app, local_model_ids
    from src.server.controller import check_bind_security, serve_forever

    api_key = (args.api_key or "").strip() or _settings.get_settings().server_api_key
    check_bind_security(args.host, api_key)  # before loading anything: a refusal should be instant
    model = args.model or _settings.DEFAULT_LOCAL_MODEL
    available = local_model_ids()
    if model not in available:
        raise UnknownModelError(model, available)
    print(f"Loading {model}...", file=sys.stderr, flush=True)
    _preload(model)
    app = create_app(
        default_model=model,
        api_key=api_key,
        cors_origins=tuple(args.cors_origins or ()),
        max_queue=args.max_queue,
    )

    def announce(url: str) -> None:
        print(f"Hearth OpenAI-compatible API on {url}/v1 (default model {model}; models: {', '.join(available)})",
              file=sys.stderr, flush=True)  # fmt: skip
        if api_key:
            print("Clients must send 'Authorization: Bearer <your key>'.", file=sys.stderr, flush=True)
        print("Ctrl+C stops the server.", file=sys.stderr, flush=True)

    serve_forever(args.host, args.port, app, api_key=api_key, on_started=announce)
    return 0


def _preload(model: str) -> None:
    """Load the model before the first request so that it does not pay for the load."""
    from src.utils.LocalLLMEngine import LocalLLMEngine

    load = getattr(LocalLLMEngine.shared(), "load_model", None)
    if callable(load):
        load(model)
