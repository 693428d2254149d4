"""demos/repro_head_table.py run twice (in fresh processes) writes byte-identical result files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _run(out: Path) -> dict[str, bytes]:
    subprocess.run(
        [sys.executable, "demos/repro_head_table.py", "--out", str(out)], check=True, cwd=ROOT, capture_output=True
    )
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_two_runs_are_byte_identical(tmp_path):
    first = _run(tmp_path / "a")
    second = _run(tmp_path / "b")
    assert set(first) == {"head_scores.csv", "manifest.json"}
    for name in first:
        if name == "manifest.json":  # the command line names the output directory, which differs here
            first[name] = first[name].replace(str(tmp_path / "a").encode(), b"OUT")
            second[name] = second[name].replace(str(tmp_path / "b").encode(), b"OUT")
        assert first[name] == second[name], name
    assert first["head_scores.csv"].startswith(b"layer,head,previous_token,duplicate_token,induction\n")
