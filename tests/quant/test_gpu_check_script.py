"""tools/gpu_check_quant.py, the CUDA check the lead runs on a GPU machine, still runs: here on CPU
with --tiny (the kernel rows skip), and with the packages that machine lacks made unimportable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "gpu_check_quant.py"
ABSENT_ON_THE_GPU_MACHINE = ("textual", "gguf", "platformdirs", "llama_cpp", "pluggy")

# Refuse those imports, then run the script as `python tools/gpu_check_quant.py ...` would.
RUN = f"""
import runpy, sys
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT_ON_THE_GPU_MACHINE!r}:
            raise ImportError(f"{{name}} is not installed on the GPU machine")
sys.meta_path.insert(0, Absent())
sys.argv = [{str(SCRIPT)!r}, "--device", "cpu", "--tiny"]
runpy.run_path({str(SCRIPT)!r}, run_name="__main__")
"""


def test_gpu_check_runs_on_cpu_without_the_packages_the_gpu_machine_lacks():
    out = subprocess.run([sys.executable, "-c", RUN], capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "conversion maths (CPU): ok" in out.stdout
    assert "skipped: needs CUDA" in out.stdout and "all checks passed" in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.startswith("tiny")]
    assert len(rows) == 2 * 7  # two layers, seven kinds each
    assert all("F.linear" in row for row in rows if " bf16 " in row)
