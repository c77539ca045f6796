"""`make demo`'s job in a scratch folder, and the notebook with its default parameters."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_demo_leaves_four_files_and_notebook_defaults_run(tmp_path):
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    env = {**os.environ, "PHASEGATE_DEMO_COLLECT": "4s"}
    res = subprocess.run([sys.executable, "-m", "phasegate.demo"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert not (tmp_path / "reports" / "phase1-staging-canary").exists()  # never where a plan looks
    phase_dir = tmp_path / "reports" / "demo" / "phase1-staging-canary"
    folders = [p for p in phase_dir.iterdir() if p.is_dir()]
    assert len(folders) == 1
    assert sorted(p.name for p in phase_dir.iterdir() if p.is_file()) == ["index.html", "index.json"]
    names = sorted(p.name for p in folders[0].iterdir())
    assert names == ["signoff.html", "signoff.ipynb", "signoff.json", "signoff.pdf"]
    verdict = json.loads((folders[0] / "signoff.json").read_text())["verdict"]
    assert f"VERDICT: {verdict}" in res.stdout
    for name in names:
        assert str(folders[0] / name) in res.stdout
    doc = json.loads((folders[0] / "signoff.json").read_text())
    assert doc["mode"] == "simulated" and doc["provenance"]["samples"]["simulated"] > 50_000
    # The demo never completes a plan phase: not where it lies, nor copied where the plan looks.
    plan = ROOT / "profiles" / "fault-lens-rollout.toml"
    for attempt in ("as made", "copied"):
        st = subprocess.run([sys.executable, "-m", "phasegate.cli", "status", "--plan", plan], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
        assert "Phase 1: Staging Canary [phase1-staging-canary]: GO" not in st.stdout, st.stdout
        assert "NEXT: proceed to Phase 2" not in st.stdout, st.stdout
        if attempt == "as made":
            shutil.copytree(folders[0], tmp_path / "reports" / "phase1-staging-canary" / folders[0].name)
    assert "not counted:" in st.stdout and ("made with another profile" in st.stdout or "verdict" in st.stdout)
    # The notebook with no parameters at all, from a notebooks/ folder beside the demo data.
    (tmp_path / "notebooks").mkdir()
    shutil.copy(ROOT / "notebooks" / "phase_signoff.ipynb", tmp_path / "notebooks")
    subprocess.run([sys.executable, "-m", "papermill", "phase_signoff.ipynb", "out.ipynb"],
                   cwd=tmp_path / "notebooks", check=True, capture_output=True, timeout=300)
    out = json.loads((tmp_path / "notebooks" / "out.ipynb").read_text())
    first = "".join("".join(o["data"].get("text/html", "")) for o in out["cells"][3]["outputs"] if "data" in o)
    assert f"VERDICT: {verdict}" in first  # page 1, from the demo data
