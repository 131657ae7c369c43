"""What a user gets from `pip install .`: the built wheel holds every file the code reads at run
time, and the installed `chatapp` paints its first screen in a real pseudo-terminal."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import first_screen

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "quant", "chatapp")
# A string literal naming a data file, on a line that reads it next to the code.
_DATA_NAME = re.compile(r"""["']([\w./-]+\.(?:tcss|css|toml|json|txt|jinja|j2))["']""")
_READS_BESIDE_CODE = re.compile(r"CSS_PATH|__file__|resources\.files|files\(__(?:package|name)__\)")


def _tracked(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the tracked files only, as a clean checkout would."""
    src, dist = tmp_path_factory.mktemp("checkout"), tmp_path_factory.mktemp("dist")
    for rel in _tracked(ROOT):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "--wheel-dir", str(dist), str(src)],
        check=True, capture_output=True, timeout=300,
    )
    (built,) = dist.glob("chatapp-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_names(wheel) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def test_wheel_holds_every_tracked_package_file(wheel_names):
    """Whatever lives in a package folder besides code (styles, the registry) ships with it."""
    tracked = [p for p in _tracked(ROOT) if p.split("/")[0] in PACKAGES and not p.endswith(".py")]
    assert "chatapp/app.tcss" in tracked
    assert [p for p in tracked if p not in wheel_names] == []
    modules = [p for p in _tracked(ROOT) if p.split("/")[0] in PACKAGES and p.endswith(".py")]
    assert [p for p in modules if p not in wheel_names] == []


def test_wheel_ships_the_registry_where_the_code_reads_it(wheel):
    """models.toml lives at the top of the repository; setup.py puts it in engine/hub/."""
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read("engine/hub/models.toml") == (ROOT / "models.toml").read_bytes()


def test_wheel_holds_every_data_file_the_code_names(wheel_names):
    """Each data file a module reads beside itself (CSS_PATH, __file__, importlib.resources) is in
    the wheel: found by reading the sources, so a new one is checked without editing this test."""
    named = {}
    for rel in _tracked(ROOT):
        if rel.split("/")[0] not in PACKAGES or not rel.endswith(".py"):
            continue
        for line in (ROOT / rel).read_text().splitlines():
            if _READS_BESIDE_CODE.search(line):
                for name in _DATA_NAME.findall(line):
                    named[str(Path(rel).parent / name)] = rel
    assert "chatapp/app.tcss" in named, "the scan no longer sees the app's stylesheet"
    assert {path: by for path, by in named.items() if path not in wheel_names} == {}


def test_every_css_path_exists():
    """Screens and widgets that name a stylesheet name one that is there."""
    missing = []
    for rel in _tracked(ROOT):
        if rel.startswith("chatapp/") and rel.endswith(".py"):
            for node in ast.walk(ast.parse((ROOT / rel).read_text())):
                if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CSS_PATH" for t in node.targets):
                    if isinstance(node.value, ast.Constant) and not (ROOT / rel).parent.joinpath(node.value.value).is_file():
                        missing.append((rel, node.value.value))
    assert missing == []


def _chatapp_script() -> Path:
    script = Path(sys.executable).parent / "chatapp"
    if not script.is_file():
        pytest.fail(f"no chatapp console script beside {sys.executable}: install the project (pip install -e .)")
    return script


@pytest.mark.slow
def test_installed_app_paints_first_screen_and_quits_cleanly():
    status, raw, problem = first_screen.run([str(_chatapp_script())])
    assert problem == "", first_screen.screen_text(raw).decode("utf-8", "replace")[-2000:]
    assert status == 0


@pytest.mark.slow
def test_a_crashing_app_exits_non_zero():
    """The quick start's old crash (a stylesheet missing from the wheel) must fail the command."""
    crash = ("import sys, chatapp.app as a; a.ChatApp.CSS_PATH = 'missing.tcss'; "
             "from chatapp.cli import main; sys.exit(main([]))")
    status, raw, problem = first_screen.run([sys.executable, "-c", crash], timeout=60)
    text = first_screen.screen_text(raw)
    assert b"missing.tcss" in text
    assert status not in (0, None), problem
