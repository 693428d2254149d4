"""`lens demo` runs end to end on the embedded model and writes its report and manifest."""

from __future__ import annotations

import json

from lens.__main__ import main


def test_demo_writes_report_and_manifest(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--max-new-tokens", "16"]) == 0
    out = capsys.readouterr().out
    for section in ("induction score per head", "in-context learning", "activation patching", "generated"):
        assert section in out
    html = (tmp_path / "report.html").read_text()
    assert html.count("Plotly.newPlot") == 5 and '<script src="http' not in html
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["model"]["name"] == "attn-only-2l" and manifest["seeds"] == {"torch": 0}


def test_demo_help_describes_options(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    assert "--model" in text and "--out" in text and "local checkpoint" in text


def test_a_seeded_demo_writes_the_same_bytes_twice(tmp_path, capsys):
    """Two runs with the same seed write byte-identical files (no random plotly div ids, no timings in
    files) and print the same report (the timing goes to stderr)."""
    outputs = []
    for run in ("a", "b"):
        assert main(["demo", "--out", str(tmp_path / run), "--max-new-tokens", "8"]) == 0
        outputs.append(capsys.readouterr().out.replace(str(tmp_path / run), "OUT"))
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert outputs[0] == outputs[1]
