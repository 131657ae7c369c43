"""`python -m engine inspect`: a raw completion's token probabilities and attention, as a compact
text heatmap on stdout and, with --html, a standalone page (every token HTML-escaped).

Row r of the heatmap is the query that predicted reply token r; column j is how much it attended
to token j (prompt then reply), for one layer and head or the mean over heads, shaded " ░▒▓█"."""

from __future__ import annotations

import argparse
import html
from pathlib import Path

from ..errors import RequestError

SHADES = " ░▒▓█"
MAX_COLUMNS = 100  # wider contexts are binned (each column sums its keys)


def _visible(text: str) -> str:
    shown = text.replace("\n", "⏎").replace("\t", "⇥")
    return shown if shown.strip() else shown.replace(" ", "·") or "∅"


def attention_rows(model, ids: list[int], n_prompt: int, n_reply: int, layer: int, head: int | None) -> list[list[float]]:
    """One row per reply token: the predicting query's weights over every earlier position."""
    rows = []
    for r in range(n_reply):
        weights = model.attention(ids, n_prompt + r - 1)  # (layers, heads, n_prompt + r)
        if not -weights.shape[0] <= layer < weights.shape[0]:
            raise RequestError(f"--layer must be below {weights.shape[0]} (this model's layers)")
        if head is not None and not 0 <= head < weights.shape[1]:
            raise RequestError(f"--head must be below {weights.shape[1]} (this model's heads)")
        row = weights[layer].mean(0) if head is None else weights[layer, head]
        rows.append(row.tolist())
    return rows


def text_heatmap(rows: list[list[float]], labels: list[str], width: int) -> str:
    binned = max(1, -(-width // MAX_COLUMNS))
    lines = []
    for label, row in zip(labels, rows):
        cells = [sum(row[i : i + binned]) for i in range(0, len(row), binned)]
        peak = max(cells) or 1.0
        lines.append(f"{label[:12]:>12} │" + "".join(SHADES[min(4, int(c / peak * 4.999))] for c in cells))
    return "\n".join(lines)


def html_page(prompt: str, tokens, texts: list[str], rows: list[list[float]], which: str) -> str:
    esc = html.escape
    token_spans = "".join(
        f'<span class="t" style="background:hsl({120 * t.prob:.0f},70%,80%)" '
        f'title="p={t.prob:.4f}; {esc("; ".join(f"{s!r} {p:.3f}" for _, s, p in t.top), quote=True)}">'
        f"{esc(_visible(t.text))}</span>" for t in tokens)
    heat = []
    for t, row in zip(tokens, rows):
        peak = max(row) or 1.0
        cells = "".join(f'<td style="background:rgba(200,30,30,{w / peak:.3f})" title="{esc(texts[j], quote=True)} '
                        f'{w:.4f}"></td>' for j, w in enumerate(row))
        heat.append(f"<tr><th>{esc(_visible(t.text))}</th>{cells}</tr>")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>engine inspect</title>
<style>body{{font-family:monospace}} .t{{padding:0 2px;margin:1px;display:inline-block}}
td{{width:8px;height:14px;padding:0}} th{{text-align:right;font-weight:normal;padding-right:6px}}</style></head>
<body><h1>Prompt</h1><pre>{esc(prompt)}</pre>
<h2>Reply tokens (green: the model was sure; hover for the top alternatives)</h2><p>{token_spans}</p>
<h2>Attention ({esc(which)}): one row per reply token, one column per earlier token</h2>
<table>{"".join(heat)}</table></body></html>
"""


def run_inspect(args: argparse.Namespace, model, chosen: dict) -> int:
    ids = model.encode_prompt(args.prompt)
    result = list(model.generate(ids, model.sampling_params(chosen), token_probs=10))[-1]
    tokens = list(result.token_probs)
    print(f"{len(tokens)} tokens (probability the model gave each one):")
    for t in tokens:
        alts = ", ".join(f"{_visible(s)!r} {p:.3f}" for _, s, p in t.top[:3])
        print(f"  {t.prob:6.3f}  {_visible(t.text)!r:<16} top: {alts}")
    which = f"layer {args.layer}, " + ("mean over heads" if args.head is None else f"head {args.head}")
    texts = [_visible(model.tokenizer.token_bytes(i).decode("utf-8", "replace")) for i in ids] + \
        [_visible(t.text) for t in tokens]
    if model.backend != "native":
        print(f"attention: needs the native engine ({model.name} runs on {model.backend}; use --backend native)")
        rows = [[] for _ in tokens]
    else:
        all_ids = ids + [t.id for t in tokens]
        rows = attention_rows(model, all_ids, len(ids), len(tokens), args.layer, args.head)
        print(f"\nattention, {which} (rows: reply tokens; columns: earlier tokens, ░▒▓█ = more):")
        print(text_heatmap(rows, [_visible(t.text) for t in tokens], len(all_ids)))
    if args.html:
        Path(args.html).write_text(html_page(args.prompt, tokens, texts, rows, which), encoding="utf-8")
        print(f"wrote {args.html}")
    return 0
