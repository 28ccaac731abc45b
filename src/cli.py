"""Hearth's command line: ``python main.py [chat|models|company|evolve|serve] ...``.

User errors (``HearthError``) end with a one-line message and exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from src.errors import HearthError
from src.utils.interruptible import run_interruptibly

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py",
        description="Hearth: private chat with local language models. With no command, opens the app's window "
        "(or, where a window cannot open, the app in your browser).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (model loading, timings)")
    parser.add_argument("--web", action="store_true", help="serve the GUI to a browser on 127.0.0.1 instead of a window")
    parser.add_argument("--port", type=int, default=0, help="port for --web (default 8550, or any free one)")
    parser.add_argument("--terminal", action="store_true", help="open the terminal chat instead of the GUI")
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

    models = commands.add_parser(
        "models", help="list, download, verify and delete local models", description="Manage local models."
    )
    model_commands = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    model_commands.add_parser("list", help="list known models and their status")
    download = model_commands.add_parser(
        "download",
        help="download a model (resumes a partial download)",
        description="Download MODEL (a catalog id or a Hub repo owner/name) into the models folder. Run it again "
        "after any interruption to resume. Exits 0 only when every file is complete and verified.",
    )
    download.add_argument("model", help="catalog id (e.g. qwen2.5-0.5b) or Hub repo (owner/name)")
    download.add_argument(
        "--endpoint",
        action="append",
        dest="endpoints",
        metavar="URL",
        help="Hub endpoint or mirror; repeat in order of preference (replaces the configured list for this run)",
    )
    download.add_argument("--revision", help="branch, tag or commit (default: the catalog's, usually main)")
    verify = model_commands.add_parser("verify", help="re-check every file's checksum")
    verify.add_argument("model")
    delete = model_commands.add_parser("delete", help="delete a downloaded model's files")
    delete.add_argument("model")
    add = model_commands.add_parser("add", help="add a Hub repository to the catalog")
    add.add_argument("repo", help="owner/name on the Hugging Face Hub")
    add.add_argument("--id", dest="model_id", help="the id to use in Hearth (default: the repo name, lower case)")
    add.add_argument("--revision", default="main")

    company = commands.add_parser(
        "company",
        help="a virtual software company of LLM agents writes a program (ChatDev-style)",
        description="Run the agent company on TASK: its roles design, write, review, test and document a program "
        "in WareHouse/NAME_ORG_TIMESTAMP/. Compatible with ChatDev's run.py flags; --config also takes a folder "
        "(ChatDev's CompanyConfig folders load unchanged). `company replay LOG` prints a past run's dialogue.",
    )
    company.add_argument(
        "action",
        nargs="?",
        choices=["replay", "memorize"],
        help="replay: print the dialogue of a past run; memorize: learn from past runs (experience pool)",
    )
    company.add_argument("log", nargs="?", help="replay: the run's .log file or folder; memorize: a WareHouse folder")
    company.add_argument("--task", help="what to build, e.g. 'a gomoku game with a restart button'")
    company.add_argument("--name", help="the project's name (folder and file prefix)")
    company.add_argument("--config", default="Default", help="Default, Human, AutoCoder, or a config folder path")
    company.add_argument("--org", default="DefaultOrganization")
    company.add_argument("--model", help="model for every role (default: the current chat model)")
    company.add_argument("--max-turns", type=int, dest="max_turns", help="turn limit for every phase")
    company.add_argument(
        "--path",
        dest="base_folder",
        help="incremental development: improve the program in this folder (copied; the original is not changed)",
    )
    company.add_argument("--max-tokens", type=int, dest="max_tokens", help="cap on every model call (default: each phase's own)")
    company.add_argument(
        "--allow-unsandboxed",
        action="store_true",
        help="where no sandbox can start, run the generated programs anyway, with time and memory limits only "
        "(they can then read your files and use the network)",
    )

    from src.workflows.evolution.cli import add_evolve_parser

    add_evolve_parser(commands)
    from src.server.cli import add_serve_parser

    add_serve_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None, *, open_gui: Callable[..., int] | None = None) -> int:
    """``open_gui(web=..., port=...)`` is given by main.py: the CLI itself never imports the GUI (src.ui)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    _enable_stack_dumps()
    try:
        if args.command == "models":
            return _models(args)
        if args.command == "company":
            return _company(args)
        if args.command == "serve":
            from src.server.cli import run_serve

            return run_serve(args)
        if args.command == "evolve":
            from src.workflows.evolution.cli import run_evolve

            return run_evolve(args)
        if args.command is None and not args.terminal and open_gui is not None:
            return open_gui(web=args.web, port=args.port)
        return _chat(args)
    except HearthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED


def _enable_stack_dumps() -> None:
    """Python stacks of every thread on stderr when the process crashes in native code (torch, llama.cpp), and on
    ``kill -USR1 <pid>`` while it runs: how a frozen or endlessly busy Hearth can be diagnosed without a debugger
    (the end-to-end tests use it on a failure)."""
    import faulthandler
    import signal

    try:
        faulthandler.enable(all_threads=True)
        if hasattr(signal, "SIGUSR1"):
            faulthandler.register(signal.SIGUSR1, all_threads=True)
    except (AttributeError, OSError, ValueError):  # no stderr with a file descriptor (a windowed build, a notebook)
        pass


def _configure_logging(verbose: bool) -> None:
    # --verbose is for finding out what took the time: each line says when.
    log_format = "%(asctime)s %(threadName)s %(message)s" if verbose else "%(message)s"
    logging.basicConfig(level=logging.WARNING, format=log_format, stream=sys.stderr)
    # The one-time model conversion takes ~20 s: always say so, so a first run doesn't look frozen.
    logging.getLogger("src.utils.embedded_model").setLevel(logging.INFO)
    if verbose:
        logging.getLogger("src").setLevel(logging.INFO)
    # Read by transformers when (if ever) it is imported: importing it here to say so cost 0.6 s on every command.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


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
    from src.utils.ModelManager import ModelManager

    manager = ModelManager()
    action = args.models_command
    if action == "list":
        header = ("ID", "REPO", "SIZE", "STATUS")
        rows = [
            (info.entry.id, info.entry.repo, f"{info.size_bytes / 1e9:.2f} GB" if info.size_bytes else "?",
             info.status_label)
            for info in manager.list_models()
        ]
        widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(4)]
        for row in [header, *rows]:
            print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
        return 0
    if action == "download":
        return _download(manager, args)
    if action == "verify":
        bad = manager.verify(args.model)
        if bad:
            print(f"error: corrupt files (removed; run `models download {args.model}` to fetch them again): "
                  + ", ".join(bad), file=sys.stderr)
            return EXIT_USER_ERROR
        print(f"{args.model}: every file matches its checksum")
        return 0
    if action == "delete":
        deleted = manager.delete(args.model)
        print(f"{args.model}: deleted" if deleted else f"{args.model}: nothing to delete")
        return 0
    entry = manager.add_model(args.repo, args.model_id, args.revision)
    print(f"Added {entry.repo} as {entry.id}. Download it with: python main.py models download {entry.id}")
    return 0


def _download(manager: Any, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from src.utils.downloader import DONE, CancelToken

    cancel = CancelToken()
    bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc=args.model, dynamic_ncols=True)

    def show(progress: Any) -> None:
        if progress.total and bar.total != progress.total:
            bar.total = progress.total
        bar.n = progress.done
        endpoint = (progress.endpoint or "").split("://")[-1]
        bar.set_postfix_str(f"{progress.state} {progress.file or ''} via {endpoint}".strip(), refresh=False)
        bar.refresh()

    try:
        state = manager.download(
            args.model, endpoints=args.endpoints, revision=args.revision, progress=show, cancel=cancel
        )
    except KeyboardInterrupt:
        cancel.cancel()
        bar.close()
        print("Paused. Run the same command again to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        bar.close()
    if state.status != DONE:
        print(f"Stopped ({state.status}). Run the same command again to resume.", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"{state.model_id} is ready ({state.repo} @ {state.commit[:10]}). Chat with it: "
          f"python main.py chat --model {state.model_id}")
    return 0


# --- company ------------------------------------------------------------------------------------------------------


def _company(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.action == "memorize":
        from src.workflows.company.memory import memorize

        if not args.log or not Path(args.log).is_dir():
            print("error: company memorize needs a WareHouse folder (or one run's folder)", file=sys.stderr)
            return EXIT_USER_ERROR
        runs, new = memorize(Path(args.log))
        print(f"Learned {new} new experience(s) from {runs} run(s).")
        return 0
    if args.action == "replay":
        from src.workflows.company.replay import replay_lines

        if not args.log:
            print("error: company replay needs the run's .log file (or its folder)", file=sys.stderr)
            return EXIT_USER_ERROR
        for line in replay_lines(Path(args.log)):
            print(line)
        return 0
    if not args.task or not args.task.strip():
        print("error: --task is required (what should the company build?)", file=sys.stderr)
        return EXIT_USER_ERROR
    import threading

    from src.errors import UnsandboxedRunRefusedError
    from src.utils.ChatUtils import AIRequestHandlerWithHistory
    from src.workflows.company.runner import CompanyRun
    from src.workflows.company.sandbox import require_containment

    try:
        require_containment(args.allow_unsandboxed)  # before a model is loaded: a refusal should be instant
    except UnsandboxedRunRefusedError as refused:
        # At a terminal the user is asked, once for this run; a script (no terminal) gets the refusal.
        if not (sys.stdin.isatty() and sys.stdout.isatty()) or not _confirm(f"{refused}\nRun it without a sandbox?"):
            raise
        args.allow_unsandboxed = True
    handler = AIRequestHandlerWithHistory()
    if args.model:
        handler.refresh_config(model_override=args.model)
    cancel = threading.Event()

    def show(event: Any) -> None:
        if event.kind == "phase":
            print(f"\n== {event.phase} ==", flush=True)
        elif event.kind == "utterance":
            print(f"[{event.role}] {event.text.strip()}\n", flush=True)
        elif event.kind in ("notice", "test"):
            print(f"({event.text.strip()})", file=sys.stderr, flush=True)

    def ask_human(prompt: str) -> str:
        print(prompt, flush=True)
        try:
            return input("reviewer> ")
        except EOFError:
            return "end"

    name = args.name or "_".join(args.task.split()[:3]) or "project"
    run = CompanyRun(
        args.task.strip(),
        name,
        config=args.config,
        org=args.org,
        model=handler.model,
        max_turns=args.max_turns,
        max_tokens=args.max_tokens,
        on_event=show,
        cancel=cancel,
        human=ask_human,
        base_folder=args.base_folder,
        allow_unsandboxed=args.allow_unsandboxed,
    )
    # Ctrl+C only asks the company to stop: it then finishes its log and summary.
    result = run_interruptibly(run.run, cancel, "stopping the company: finishing the log and summary...", "hearth-company")
    if result is None:
        print("error: the company stopped without a result (see the log in its WareHouse folder)", file=sys.stderr)
        return EXIT_USER_ERROR
    print("\n" + result.summary)
    return EXIT_INTERRUPTED if result.cancelled else 0


def _confirm(question: str) -> bool:
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False
