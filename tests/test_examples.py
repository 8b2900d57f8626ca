"""Every script in examples/ runs on small data (BLOCKZOO_QUICK=1) and exits cleanly.

Each example honours ``--quick`` / ``BLOCKZOO_QUICK=1`` (small data, few epochs) and
asserts its own lesson (the line is found, the blobs are separated, ...), so a
failing lesson fails here. New examples are picked up with no edit of this file.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_quick(script: Path, tmp_path: Path) -> None:
    text = script.read_text()
    assert "BLOCKZOO_QUICK" in text or "--quick" in text, f"{script.name} has no quick switch"
    env = {**os.environ, "BLOCKZOO_QUICK": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, str(script), "--quick"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{script.name} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert r.stdout.strip(), f"{script.name} printed nothing"
