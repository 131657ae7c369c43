"""Pick a model from models.toml. Entries not on this machine are marked: downloadable (press d,
with progress) when the Hub can be reached, unavailable when it cannot."""

from __future__ import annotations

from collections.abc import Callable

from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList, ProgressBar
from textual.widgets.option_list import Option

from engine import EngineError, Registry, find_local

Progress = Callable[[int, int], None]  # (bytes done, bytes in all; 0 while unknown)
Pull = Callable[[str, Progress], None]  # download a models.toml entry by name, reporting progress


def availability(registry: Registry) -> dict[str, bool]:
    """Which entries are on this machine: no network, no hashing (the picker opens instantly)."""
    return {name: spec.is_remote or find_local(spec) is not None for name, spec in registry.models.items()}


def hub_reachable() -> bool:
    """False under HF_HUB_OFFLINE without touching the network; else a short connection check.
    Blocks for up to a couple of seconds: call it on a worker thread."""
    from engine import hub

    return not hub.hub_offline() and hub.hub_reachable()


def pull_with_engine(registry: Registry) -> Pull:
    def pull(name: str, progress: Progress) -> None:
        from engine import pull as engine_pull

        engine_pull(registry.get(name), progress=progress)

    return pull


class PullProgress(Message):
    def __init__(self, name: str, done: int, total: int) -> None:
        super().__init__()
        self.name, self.done, self.total = name, done, total


class PullFinished(Message):
    def __init__(self, name: str, error: str | None) -> None:
        super().__init__()
        self.name, self.error = name, error


class HubChecked(Message):
    def __init__(self, reachable: bool) -> None:
        super().__init__()
        self.reachable = reachable


class ModelPickerScreen(ModalScreen[str | None]):
    BINDINGS = [("escape", "dismiss(None)", "Cancel"), ("d", "download", "Download")]

    def __init__(self, registry: Registry, current: str | None, *, pull: Pull | None = None,
                 reachable: Callable[[], bool] | None = None) -> None:
        super().__init__(classes="dialog-screen")
        self.registry, self.current = registry, current
        self._pull = pull or pull_with_engine(registry)
        self._reachable = reachable or hub_reachable
        self.online: bool | None = None  # None: not known yet
        self.pulling: str | None = None
        self.local = availability(registry)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide", id="models"):
            yield Label("Choose a model (● on this machine, ○ not downloaded: d downloads it, ✗ not here and offline)",
                        classes="dialog-title")
            yield OptionList(*self._options())
            yield Label("", id="pull-status", markup=False)
            yield ProgressBar(id="pull-progress", show_eta=False)

    def on_mount(self) -> None:
        if not all(self.local.values()):
            self._check_hub()

    def _options(self) -> list[Option]:
        options = []
        for name, spec in self.registry.models.items():
            here, offline = self.local[name], self.online is False
            mark = "●" if here else ("✗" if offline else "○")
            current = "  (current)" if name == self.current else ""
            size = f"  [{spec.size}]" if spec.size else ""
            size += f"  (remote: {spec.host})" if spec.is_remote else ""
            why = "" if here else ("  (not on this machine; offline)" if offline else "  (d: download)")
            options.append(Option(Content(f"{mark} {name}{current}  {spec.description}{size}{why}"), id=name,
                                  disabled=not here and offline))
        return options

    def _refresh_options(self) -> None:
        options = self.query_one(OptionList)
        highlighted = options.highlighted
        options.clear_options()
        options.add_options(self._options())
        options.highlighted = highlighted

    @work(thread=True, exclusive=True, group="hub-check")
    def _check_hub(self) -> None:
        self.post_message(HubChecked(self._reachable()))

    def on_hub_checked(self, event: HubChecked) -> None:
        self.online = event.reachable
        self._refresh_options()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if self.pulling is not None:
            self.notify(f"Downloading {self.pulling}: wait for it, or Esc to leave it downloading.", severity="warning")
            return
        self.dismiss(event.option.id)

    # ---- download -------------------------------------------------------------------------------

    def action_download(self) -> None:
        options = self.query_one(OptionList)
        if options.highlighted is None or self.pulling is not None:
            return
        name = options.get_option_at_index(options.highlighted).id
        if self.local[name]:
            self.notify(f"{name} is already on this machine.", markup=False)
            return
        if self.online is not True:
            why = "the Hugging Face Hub cannot be reached" if self.online is False else "still checking the connection"
            self.notify(f"Cannot download {name}: {why}.", severity="warning", markup=False)
            return
        self.pulling = name
        self.query_one("#pull-status", Label).update(f"Downloading {name}…")
        bar = self.query_one("#pull-progress", ProgressBar)
        bar.update(total=None, progress=0)
        bar.display = True
        self._pull_worker(name)

    @work(thread=True, exclusive=True, group="pull")
    def _pull_worker(self, name: str) -> None:
        try:
            self._pull(name, lambda done, total: self.post_message(PullProgress(name, done, total)))
        except (EngineError, ValueError, OSError) as e:
            self.post_message(PullFinished(name, str(e)))
        else:
            self.post_message(PullFinished(name, None))

    def on_pull_progress(self, event: PullProgress) -> None:
        bar = self.query_one("#pull-progress", ProgressBar)
        bar.update(total=event.total or None, progress=event.done)
        if event.total:
            self.query_one("#pull-status", Label).update(
                f"Downloading {event.name}: {event.done / 1e6:.1f} of {event.total / 1e6:.1f} MB")

    def on_pull_finished(self, event: PullFinished) -> None:
        self.pulling = None
        self.query_one("#pull-progress", ProgressBar).display = False
        status = self.query_one("#pull-status", Label)
        if event.error is not None:
            status.update(f"Download failed: {event.error}")
            return
        self.local = availability(self.registry)
        status.update(f"{event.name} downloaded: Enter to use it.")
        self._refresh_options()
