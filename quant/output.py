"""The folder `quant --out` names: what may be replaced, the space it needs, the swap into place,
and the temporaries a killed run leaves behind.

A run writes `.<name>.tmp-<pid>-*` beside the output (and `.<name>.<kind>.gguf.tmp-<pid>` for a
GGUF export), then swaps it in: the old folder is renamed to `.<name>.old-<pid>`, the new one
into place, and the old one deleted. The pid in every name says whose it is: the next run for the
same output removes those of processes that are gone, and finishes a swap one of them left half
done (new folder complete: put in place; else the old one put back), so a kill at any point loses
neither the old output nor the work of a completed one.

`--force` replaces only a folder `quant` wrote: one whose `quantization.json` says so and that
holds nothing else than the files it lists; never a folder that holds the source model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

FORMAT = "chatapp-quantized"
QUANTIZATION = "quantization.json"  # the marker: written last, in every output folder


def resolved_output(out_dir: Path) -> Path:
    """The absolute path (`--out .` has no name of its own: its temporaries need one)."""
    return Path(os.path.abspath(out_dir))


def check_output_folder(out_dir: Path, *, force: bool, source: Path | None = None) -> None:
    """Refuse, before any work, an output that cannot be written or must not be replaced."""
    out = resolved_output(out_dir)
    if out.parent == out:
        raise FileExistsError(f"--out {out_dir}: cannot replace the root folder; name a new folder")
    if source is not None:
        src = resolved_output(source)
        if src == out or out in src.parents:
            raise FileExistsError(f"--out {out_dir} holds the source model {source}; it is never replaced: choose another --out")
    if out == Path.cwd() or out in Path.cwd().parents:
        raise FileExistsError(f"--out {out_dir} is the current folder or holds it; name a new folder")
    if out.exists() and not force:
        raise FileExistsError(f"{out_dir} already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    if out.exists():
        _check_replaceable(out, out_dir)
    parent = out.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write in {parent}")


def _check_replaceable(out: Path, shown: Path) -> None:
    refuse = "--force replaces only a folder quant wrote: remove it yourself or choose another --out"
    try:
        info = json.loads((out / QUANTIZATION).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        info = None
    if not isinstance(info, dict) or info.get("format") != FORMAT or not isinstance(info.get("files", []), list):
        raise FileExistsError(f"{shown} was not written by quant (no {QUANTIZATION} of its own); {refuse}")
    # Format version 1 listed no files: its fixed names, and any GGUF export, are quant's.
    listed = {str(f) for f in info.get("files", [])} | {QUANTIZATION, "model.safetensors", "model_args.json",
                                                        "tokenizer_metadata.json"}
    foreign = sorted(p.name for p in out.iterdir()
                     if p.name not in listed and not (p.is_file() and re.fullmatch(r"model-Q\w+\.gguf", p.name)))
    if foreign:
        shown_names = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise FileExistsError(f"{shown} holds files quant did not write ({shown_names}); {refuse}")


def check_free_space(out_dir: Path, need: int) -> None:
    """Refuse before the work when the output's folder has less room than the output needs (the old
    folder, if replaced, is deleted only after the new one is complete, so it frees nothing)."""
    parent = resolved_output(out_dir).parent
    free = shutil.disk_usage(parent).free
    if free < need:
        raise OSError(f"not enough free space in {parent}: the output needs about {need / 1e6:.0f} MB and "
                      f"{free / 1e6:.0f} MB are free; free some space or choose another --out")


def estimate_bytes(shapes: list[tuple[int, ...]], scheme: str, group_size: int, gguf_kind: str | None) -> int:
    """About what the output takes on disk, on the generous side: matrices quantized (INT8: a byte and
    a float16 scale per group; INT4: half a byte, a float16 scale and minimum per group), vectors in
    float32, a GGUF export's blocks (Q8_0: 34 bytes per 32 weights, Q4_0: 18), plus the text side."""
    per_weight = {"int8": 1 + 2 / group_size, "int4": 0.5 + 4 / group_size}[scheme]
    gguf = {"q8_0": 34 / 32, "q4_0": 18 / 32}.get(gguf_kind or "", 0.0)
    total = 0.0
    for shape in shapes:
        n = 1
        for d in shape:
            n *= d
        total += n * ((per_weight + gguf) if len(shape) == 2 else 4 + 4 * bool(gguf))
    return int(total * 1.1) + 32_000_000


def temporary_folder(out_dir: Path) -> Path:
    out = resolved_output(out_dir)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))


def temporary_gguf(out_dir: Path, kind: str) -> Path:
    out = resolved_output(out_dir)
    return out.parent / f".{out.name}.{kind}.gguf.tmp-{os.getpid()}"


def swap_in(tmp: Path, out_dir: Path) -> None:
    """Put the complete folder `tmp` in place of `out_dir` (see the module doc: a kill at any point
    is recovered by the next run)."""
    out = resolved_output(out_dir)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _leftovers(out: Path) -> list[tuple[str, int, Path]]:
    """(kind, pid, path) of this output's temporaries: kind "tmp", "old" or "gguf"."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(?:(tmp|old)|q\d_\d\.(gguf)\.tmp)-(\d+)(?:-.*)?")
    found = []
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return []
    for path in entries:
        m = pattern.fullmatch(path.name)
        if m:
            found.append((m.group(1) or m.group(2), int(m.group(3)), path))
    return found


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def recover(out_dir: Path) -> list[str]:
    """Finish the swaps and remove the temporaries of runs for this output whose process is gone.
    Returns what was done, one line each, for the user."""
    out = resolved_output(out_dir)
    dead = [(kind, pid, path) for kind, pid, path in _leftovers(out) if not _alive(pid)]
    done = []
    for kind, pid, old in dead:
        if kind != "old" or out.exists():
            continue
        complete = [p for k, q, p in dead if k == "tmp" and q == pid and (p / QUANTIZATION).is_file()]
        os.replace(complete[0] if complete else old, out)
        done.append(f"finished the replacement of {out} that process {pid} left half done"
                    if complete else f"put back {out}, which process {pid} had moved aside")
    freed = removed = 0
    for kind, pid, path in dead:
        if not path.exists() and not path.is_symlink():
            continue  # moved into place above
        removed += 1
        if path.is_dir() and not path.is_symlink():
            freed += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            shutil.rmtree(path, ignore_errors=True)
        else:
            freed += path.lstat().st_size
            path.unlink(missing_ok=True)
    if removed:
        done.append(f"removed {removed} temporary file(s) of interrupted runs ({freed / 1e6:.1f} MB)")
    return done
