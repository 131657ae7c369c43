"""engine.hub.download's helpers for UIs: progress reported through a silent tqdm class, and the quick
"can the Hub be reached" check (against closed local ports: tests never reach the Hub)."""

import socket

from huggingface_hub import constants
from huggingface_hub.utils.tqdm import _create_progress_bar

from engine.hub import download as hub


def test_byte_bars_report_progress_and_draw_nothing(capsys):
    seen = []
    cls = hub._reporting_tqdm(lambda done, total: seen.append((done, total)))
    # Built the way huggingface_hub builds its bars for a caller's tqdm class.
    bar = _create_progress_bar(cls=cls, log_level=0, name="x", total=1000, initial=100, unit="B", unit_scale=True)
    bar.update(400)
    bar.total = 2000  # snapshot_download grows the total as it learns file sizes
    bar.update(500)
    bar.close()
    files = _create_progress_bar(cls=cls, log_level=0, total=3)  # counts files, not bytes
    files.update(1)
    assert seen == [(500, 1000), (1000, 2000)]
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_hub_reachable_is_false_when_nothing_listens(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    assert hub.hub_reachable(timeout=0.5) is False


def test_hub_reachable_is_true_when_the_endpoint_answers(monkeypatch):
    import http.server
    import threading

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    with http.server.HTTPServer(("127.0.0.1", 0), Answer) as server:
        threading.Thread(target=server.handle_request, daemon=True).start()
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        assert hub.hub_reachable(timeout=2.0) is True
