"""The token and attention inspector for one reply.

Tokens are coloured by the probability the model gave each one (recorded during generation,
chatapp/inspection.py); the selected token shows its probability and the top alternatives. Its
attention over every earlier token is recomputed on demand by the native engine
(`model.attention`, in a thread worker that reaches the screen by post_message): one layer and
head at a time, or the mean over heads, with the strongest attended tokens listed by weight and
a layer x head overview of where attention went.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Label, Static

from ..inspection import BANDS, Token, segments, shares, strongest, visible
from ..widgets.token_strip import TokenStrip

SHORT = {"system": "S", "last user message": "U", "reply so far": "R", "other": "O"}
Attention = Callable[[list[int], int], object]  # model.attention: ids, position -> [layers, heads, position + 1]


class AttentionReady(Message):
    def __init__(self, position: int, weights: list | None, error: str | None = None) -> None:
        super().__init__()
        self.position, self.weights, self.error = position, weights, error


class InspectorScreen(Screen[None]):
    BINDINGS = [
        Binding("escape,q", "close", "Close", tooltip="Back to the chat"),
        Binding("left", "move(-1)", "Prev token", tooltip="Select the previous token"),
        Binding("right", "move(1)", "Next token", tooltip="Select the next token"),
        Binding("up", "layer(-1)", "Layer up", tooltip="The previous layer"),
        Binding("down", "layer(1)", "Layer down", tooltip="The next layer"),
        Binding("left_square_bracket", "head(-1)", "Prev head", tooltip="The previous head (after head 0: the mean)"),
        Binding("right_square_bracket", "head(1)", "Next head", tooltip="The next head (after the last: the mean)"),
    ]

    def __init__(self, tokens: list[Token], *, prompt_ids: list[int], prompt_texts: list[str],
                 system: str | None, last_user: str | None, attention: Attention | None,
                 why_no_attention: str = "", n_kv_heads: int | None = None, parts: list[str] | None = None) -> None:
        super().__init__()
        self.tokens, self.prompt_ids, self.prompt_texts = tokens, prompt_ids, prompt_texts
        self.token_parts = parts if parts is not None and len(parts) == len(tokens) else ["answer"] * len(tokens)
        self.parts = segments(prompt_texts, system, last_user)
        self.attention, self.why_no_attention, self.n_kv_heads = attention, why_no_attention, n_kv_heads
        self.at_layer, self.at_head = 0, -1  # head -1: the mean over heads
        self.weights: dict[int, list] = {}  # position -> [layers][heads][keys], computed on demand

    def compose(self) -> ComposeResult:
        yield Label(f"Inspector: {len(self.tokens)} reply tokens", id="inspector-title")
        legend = Text("Probability the model gave each token: ")
        for low, name, style in BANDS:
            legend.append(f"■ {name} ≥{low:.0%}  ", style=style)
        if "thinking" in self.token_parts:
            legend.append("thinking", style="italic").append("  ")
        if "tool call" in self.token_parts:
            legend.append("tool call", style="underline")
        yield Static(legend, id="inspector-legend")
        with VerticalScroll(id="inspector-tokens"):
            yield TokenStrip(self.tokens, self.token_parts, id="token-strip")
        with Horizontal(id="inspector-panes"):
            yield Static(id="token-detail", markup=False)
            with VerticalScroll(id="attention-pane"):
                yield Static(id="attention-view", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(TokenStrip).focus()
        self._show()

    # -- selection -------------------------------------------------------------------------

    @property
    def index(self) -> int:
        return self.query_one(TokenStrip).selected

    @property
    def position(self) -> int:
        """The selected token's query position: the prompt, then the reply's tokens before it
        (its logits were computed there, from the token before)."""
        return len(self.prompt_ids) + self.index - 1

    def action_move(self, step: int) -> None:
        strip = self.query_one(TokenStrip)
        strip.selected = max(0, min(len(self.tokens) - 1, strip.selected + step))
        self._show()

    @on(TokenStrip.Selected)
    def _clicked(self) -> None:
        self._show()

    def action_layer(self, step: int) -> None:
        weights = self.weights.get(self.position)
        if weights:
            self.at_layer = (self.at_layer + step) % len(weights)
            self._show_attention()

    def action_head(self, step: int) -> None:
        weights = self.weights.get(self.position)
        if weights:
            n = len(weights[0])
            self.at_head = (self.at_head + 1 + step) % (n + 1) - 1  # -1 (the mean), 0 .. n - 1
            self._show_attention()

    def action_close(self) -> None:
        self.dismiss(None)

    # -- the panes -------------------------------------------------------------------------

    def _show(self) -> None:
        if not self.tokens:
            self.query_one("#token-detail", Static).update("No token probabilities were recorded for this reply.")
            self.query_one("#attention-view", Static).update("")
            return
        token = self.tokens[self.index]
        part = self.token_parts[self.index]
        where = "" if part == "answer" else f" ({part})"
        lines = [f"Token {self.index + 1}/{len(self.tokens)}{where}: {visible(token.text)!r}  p = {token.prob:.4f}", "",
                 "Top alternatives:"]
        lines += [f"{'▶' if i == token.id else ' '} {p:8.4f}  {visible(s)!r}" for i, s, p in token.top]
        self.query_one("#token-detail", Static).update("\n".join(lines))
        self._show_attention()

    def _show_attention(self) -> None:
        view = self.query_one("#attention-view", Static)
        if self.attention is None:
            view.update(f"Attention: {self.why_no_attention}")
            return
        position = self.position
        weights = self.weights.get(position)
        if weights is None:
            view.update("Attention: computing…")
            self._compute(position)
            return
        view.update(self._describe(weights, position))

    @work(thread=True, exclusive=True, group="attention")
    def _compute(self, position: int) -> None:
        try:
            ids = self.prompt_ids + [t.id for t in self.tokens[: position + 1 - len(self.prompt_ids)]]
            weights = self.attention(ids, position).tolist()
        except Exception as e:  # a model swapped or failing must leave the screen usable
            self.post_message(AttentionReady(position, None, f"{type(e).__name__}: {e}"))
            return
        self.post_message(AttentionReady(position, weights))

    @on(AttentionReady)
    def _ready(self, event: AttentionReady) -> None:
        if event.weights is None:
            self.query_one("#attention-view", Static).update(f"Attention failed: {event.error}")
            return
        self.weights[event.position] = event.weights
        if event.position == self.position:
            self._show_attention()

    def _token_text(self, i: int) -> str:
        n = len(self.prompt_texts)
        text = self.prompt_texts[i] if i < n else self.tokens[i - n].text
        return visible(text)

    def _describe(self, weights: list, position: int) -> str:
        n_layers, n_heads = len(weights), len(weights[0])
        self.at_layer = min(self.at_layer, n_layers - 1)
        if self.at_head < 0:
            row = [sum(h[k] for h in weights[self.at_layer]) / n_heads for k in range(position + 1)]
            which = f"mean over {n_heads} heads"
        else:
            row = weights[self.at_layer][self.at_head]
            group = n_heads // (self.n_kv_heads or n_heads)
            which = f"head {self.at_head}/{n_heads - 1} (KV group {self.at_head // group}: heads " \
                    f"{self.at_head // group * group}-{self.at_head // group * group + group - 1})"
        lines = [f"Attention of position {position}: layer {self.at_layer}/{n_layers - 1}, {which}",
                 "(up/down: layer, [ ]: head)", "", "Strongest:"]
        lines += [f"{w:7.3f}  #{i:<5} {self._token_text(i)!r}" for i, w in strongest(row)]
        reply_start = len(self.prompt_ids)
        split = shares(row, self.parts, reply_start)
        lines += ["", "Share: " + ", ".join(f"{name} {share:.0%}" for name, share in split.items()), "",
                  "Overview (largest share per layer x head: S system, U last user message, R reply, O other)"]
        lines.append("      " + " ".join(f"h{h:<4}" for h in range(n_heads)))
        for layer, heads in enumerate(weights):
            cells = []
            for head_row in heads:
                name, share = max(shares(head_row, self.parts, reply_start).items(), key=lambda kv: kv[1])
                cells.append(f"{SHORT[name]}{share * 100:3.0f}%")
            lines.append(f"{'▶' if layer == self.at_layer else ' '}L{layer:<3} " + " ".join(cells))
        return "\n".join(lines)
