"""The `chatapp` console script."""

from __future__ import annotations

import argparse
import sys

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatapp", description="Chat with a local LLM in the terminal.")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("ask", help="ask one question and stream the answer to stdout")
    p.add_argument("question", nargs="*", help="the question ('-' or none: read stdin)")
    p.add_argument("-s", "--system", help="system prompt (default: the model's own)")
    add_model_args(p)
    add_sampling_args(p)
    p.set_defaults(func=cmd_ask)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return run_cli("chatapp", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
