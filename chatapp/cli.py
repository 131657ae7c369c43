"""The `chatapp` console script: the TUI by default, `chatapp ask` for one streamed answer."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.cli import add_model_args, add_sampling_args, load_model, print_stream, run_cli, sampling_kwargs


def cmd_ask(args: argparse.Namespace) -> int:
    question = " ".join(args.question).strip()
    if question == "-" or (not question and not sys.stdin.isatty()):
        question = sys.stdin.read().strip()
    if not question:
        raise ValueError("ask needs a question: chatapp ask \"...\"")
    messages = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": question})
    sampling = sampling_kwargs(args)
    model = load_model(args)
    print_stream(model.chat(messages, **sampling), stats=args.stats)
    return 0


def cmd_tui(args: argparse.Namespace) -> int:
    from .app import ChatApp
    from .store import Store

    def load(name: str | None):
        import engine

        return engine.load(name, backend=args.backend, device=args.device, dtype=args.dtype, context_length=args.ctx)

    with Store(args.db) as store:
        ChatApp(store=store, model=args.model, load_model=load, allowed_dirs=args.allow_dir).run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatapp",
        description="Chat with a local LLM in the terminal. With no command, opens the chat app.",
    )
    add_model_args(parser)
    parser.add_argument("--ctx", type=int, default=None, help="context window in tokens (default: the model's)")
    parser.add_argument("--db", type=Path, default=None, help="history database (default: in the user data dir)")
    parser.add_argument(
        "--allow-dir", action="append", type=Path, default=[], metavar="DIR",
        help="let the file tools list and read files under DIR (repeatable; default: none)",
    )
    parser.set_defaults(func=cmd_tui)
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("ask", help="ask one question and stream the answer to stdout")
    p.add_argument("question", nargs="*", help="the question ('-' or none: read stdin)")
    p.add_argument("-s", "--system", help="system prompt (default: the model's own)")
    add_model_args(p)
    add_sampling_args(p)
    p.set_defaults(func=cmd_ask)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("chatapp", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
