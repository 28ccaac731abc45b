"""Hearth's command line: ``python main.py [chat|models] ...``.

User errors (``HearthError``) end with a one-line message and exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from src.errors import HearthError

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py",
        description="Hearth: private chat with local language models. With no command, opens the terminal chat.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (model loading, timings)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    chat = commands.add_parser(
        "chat",
        help="chat in the terminal (one message, or interactive)",
        description="Send MESSAGE and stream the reply, or with no MESSAGE start an interactive chat. "
        "Ctrl+C stops the current reply (it is kept); Ctrl+D or /exit quits.",
    )
    chat.add_argument("message", nargs="?", help="the message to send; omit for an interactive chat")
    chat.add_argument("--chat-id", help="continue this conversation (default: a new one, whose id is printed)")
    chat.add_argument("--model", help="model for this run: a local model id or path, or the server's model name")
    chat.add_argument("--max-tokens", type=int, dest="max_new_tokens", help="longest reply, in tokens")
    chat.add_argument("--temperature", type=float, help="0 = deterministic; higher = more varied")
    chat.add_argument("--system", dest="system_prompt", help="set the conversation's system prompt")

    models = commands.add_parser("models", help="list local models", description="Manage local models.")
    model_commands = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    model_commands.add_parser("list", help="list known models and their status")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        if args.command == "models":
            return _models(args)
        return _chat(args)
    except HearthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    # The one-time model conversion takes ~20 s: always say so, so a first run doesn't look frozen.
    logging.getLogger("src.utils.embedded_model").setLevel(logging.INFO)
    if verbose:
        logging.getLogger("src").setLevel(logging.INFO)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except ImportError:  # the CLI's help and errors still work without the ML stack
        pass


# --- chat -------------------------------------------------------------------------------------------------------


def _chat(args: argparse.Namespace) -> int:
    from src.db.chats import ChatStore
    from src.utils.ChatUtils import AIRequestHandlerWithHistory

    handler = AIRequestHandlerWithHistory()
    if getattr(args, "model", None):
        handler.refresh_config(model_override=args.model)
    chat_id = getattr(args, "chat_id", None) or ChatStore.new_chat_id()
    if getattr(args, "system_prompt", None) is not None:
        handler.chats.get_or_create_chat(chat_id)
        handler.chats.set_system_prompt(chat_id, args.system_prompt or None)
    params = {
        key: value
        for key in ("max_new_tokens", "temperature")
        if (value := getattr(args, key, None)) is not None
    }
    if getattr(args, "message", None) is not None:
        if not getattr(args, "chat_id", None):
            print(f"(conversation {chat_id}; continue it with --chat-id {chat_id})", file=sys.stderr)
        return 0 if _stream_reply(handler, chat_id, args.message, params) else EXIT_INTERRUPTED
    return _interactive(handler, chat_id, params)


def _stream_reply(handler: Any, chat_id: str, text: str, params: dict[str, Any]) -> bool:
    """Print the reply as it streams. Returns False when the user stopped it with Ctrl+C (the partial is kept)."""
    reply = handler.get_streaming_response(chat_id, text, **params)
    try:
        for piece in reply:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        reply.close()
        sys.stdout.write("\n")
        print("[stopped]", file=sys.stderr)
        return False
    sys.stdout.write("\n")
    sys.stdout.flush()
    result = reply.result
    if result is not None and result.stats.completion_tokens:
        speed = f", {result.stats.tokens_per_s:.1f} tokens/s" if result.stats.tokens_per_s else ""
        notes = [f"{result.model}: {result.stats.completion_tokens} tokens{speed}"]
        if result.finish_reason == "length":
            notes.append("reply cut at the token limit (raise --max-tokens)")
        if result.dropped_messages:
            notes.append(f"{result.dropped_messages} old messages left out to fit the context window")
        print(f"[{'; '.join(notes)}]", file=sys.stderr)
    return True


def _interactive(handler: Any, chat_id: str, params: dict[str, Any]) -> int:
    print(
        f"Hearth terminal chat, model {handler.model.model_name}, conversation {chat_id}.\n"
        "Ctrl+C stops a reply; Ctrl+D or /exit quits.",
        file=sys.stderr,
    )
    while True:
        try:
            text = input("you> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print("\n(Ctrl+D or /exit quits)", file=sys.stderr)
            continue
        if text.strip() in ("/exit", "/quit"):
            return 0
        if not text.strip():
            continue
        sys.stdout.write("hearth> ")
        try:
            _stream_reply(handler, chat_id, text, params)
        except HearthError as exc:
            print(f"error: {exc}", file=sys.stderr)


# --- models -----------------------------------------------------------------------------------------------------


def _models(args: argparse.Namespace) -> int:
    from src.utils.catalog import BUILTIN_MODELS, is_loadable_model_dir, model_dir

    rows = []
    for entry in BUILTIN_MODELS:
        if entry.embedded:
            status = "embedded"
        else:
            status = "ready" if is_loadable_model_dir(model_dir(entry.id)) else "not downloaded"
        rows.append((entry.id, entry.repo, f"{entry.size_bytes / 1e9:.2f} GB", status))
    widths = [max(len(str(row[i])) for row in [("ID", "REPO", "SIZE", "STATUS"), *rows]) for i in range(4)]
    for row in [("ID", "REPO", "SIZE", "STATUS"), *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0
