"""The README and docs/ stay consistent with the repository they describe."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _readme_test_command() -> str:
    text = (ROOT / "README.md").read_text()
    commands = [line for line in re.findall(r"```bash\n(.*?)```", text, re.S)
                for line in line.splitlines() if "pytest tests" in line]
    assert len(commands) == 1, commands
    return commands[0].strip()


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _readme_test_command() in [line.strip() for line in ci]


def test_readme_test_command_installs_spikingjelly():
    assert "spikingjelly==" in _readme_test_command()


def test_paths_named_in_docs_exist():
    missing = []
    for doc in DOCS:
        for path in re.findall(r"`((?:benchmarks|results|scripts|tests|docs|csrc|tcl_fast)/[\w./-]+)`",
                               doc.read_text()):
            if "<" in path or "*" in path or path.startswith("benchmarks/results/local"):
                continue  # a pattern, or the git-ignored folder of uncommitted runs
            if not (ROOT / path).exists():
                missing.append(f"{doc.name}: {path}")
    assert not missing, missing


def test_result_folders_are_named_by_date():
    for folder in (ROOT / "benchmarks" / "results").glob("gpu_*/*"):
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}(-\d{4})?", folder.name), folder
