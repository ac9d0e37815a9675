"""README.md's first table against the committed result files it cites.

Each row's number cell names one JSON result file; the numbers the cell
states are read back from that file and must equal it within the rounding
shown (97.5 stands for anything in [97.45, 97.55]). A row whose claim no longer
parses, a row without a check here, or a file that is missing fails: the
README and its results cannot drift apart silently. Only the first table is
read (later sections are free to grow).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUM = r"(\d+(?:\.\d+)?)"


def first_table(text: str) -> list[list[str]]:
    """The body rows (cells stripped) of the first Markdown table in ``text``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.lstrip().startswith("|"):
            break
        table.append([c.strip() for c in line.strip().strip("|").split("|")])
    assert len(table) >= 3 and set(table[1][0]) <= set("-: "), "no header/separator in the first table"
    return table[2:]


def cited_result(cell: str) -> Path:
    files = re.findall(r"`((?:benchmarks/)?results/[\w./-]+\.json)`", cell)
    assert len(files) == 1, f"a number cell must cite exactly one result file in backticks: {cell!r}"
    path = ROOT / files[0]
    assert path.is_file(), f"{files[0]} (cited in README.md) does not exist"
    return path


def assert_shown(shown: str, value: float, what: str) -> None:
    """``shown`` (a decimal as printed) is ``value`` rounded to its digits."""
    digits = len(shown.split(".")[1]) if "." in shown else 0
    assert abs(float(shown) - value) <= 0.5 * 10 ** -digits + 1e-9, \
        f"README says {what} = {shown}, the result file gives {value:.6g}"


def claim(cell: str, pattern: str) -> re.Match:
    m = re.search(pattern, cell)
    assert m, f"README's claim no longer reads as the check expects ({pattern!r}): {cell!r}"
    return m


def check_lif(cell: str, data: dict) -> int:
    m = claim(cell, rf"forward\+backward, T = (\d+), 2\^(\d+) neurons, (\w+): {NUM} ms, {NUM}× the PyTorch "
                    rf"reference, {NUM}× SpikingJelly")
    T, neurons, dtype = int(m[1]), 1 << int(m[2]), m[3]
    rows = {r["backend"]: r for r in data["rows"]
            if (r["T"], r["neurons"], r["dtype"]) == (T, neurons, dtype)}
    cpp, sj = rows["cpp"], rows["spikingjelly"]
    assert_shown(m[4], cpp["forward_backward_ms"], "the cpp forward+backward ms")
    assert_shown(m[5], cpp["forward_backward_speedup_vs_torch"], "the speed-up over the reference")
    assert_shown(m[6], sj["forward_backward_ms"] / cpp["forward_backward_ms"], "the speed-up over SpikingJelly")
    return 3


def check_supcon(cell: str, data: dict) -> int:
    m = claim(cell, rf"N = (\d+), D = (\d+), (\w+), forward\+backward: {NUM} ms in {NUM} MiB, against {NUM} ms "
                    rf"in {NUM} GiB for the naive formula")
    key = (int(m[1]), int(m[2]), m[3], "fwd+bwd")
    rows = {r["method"]: r for r in data["results"]
            if (r["n"], r["d"], r["dtype"], r["mode"]) == key and r["status"] == "ok"}
    fused, naive = rows["fused"], rows["naive"]
    assert_shown(m[4], fused["time_s"] * 1e3, "the fused ms")
    assert_shown(m[5], fused["peak_extra_bytes"] / 2**20, "the fused MiB")
    assert_shown(m[6], naive["time_s"] * 1e3, "the naive ms")
    assert_shown(m[7], naive["peak_extra_bytes"] / 2**30, "the naive GiB")
    return 4


def check_digits(cell: str, data: dict) -> int:
    m = claim(cell, rf"one inference step: TCL {NUM} %, plain CE {NUM} %")
    results = data["results"]
    assert_shown(m[1], results["tcl"]["mean"]["1"], "TCL's accuracy at T' = 1")
    assert_shown(m[2], results["ce"]["mean"]["1"], "CE's accuracy at T' = 1")
    return 2


# The first column's text (the part's name) -> how its number cell is checked.
CHECKS = {
    "`LIFMultiStep`, `lif_multistep`": check_lif,
    "`supcon_loss`, `tcl_loss`, `stcl_loss`": check_supcon,
    "`tcl-fast train`": check_digits,
}


def test_first_table_has_a_check_for_every_row():
    rows = first_table((ROOT / "README.md").read_text(encoding="utf-8"))
    assert [row[0] for row in rows] == list(CHECKS)


@pytest.mark.parametrize("part", list(CHECKS))
def test_readme_number_equals_its_result_file(part):
    rows = {row[0]: row for row in first_table((ROOT / "README.md").read_text(encoding="utf-8"))}
    cell = rows[part][-1]
    data = json.loads(cited_result(cell).read_text(encoding="utf-8"))
    assert CHECKS[part](cell, data) > 0


def test_the_check_fails_on_a_wrong_or_stale_number():
    # The checks themselves: a number off by more than its rounding is caught.
    data = {"results": {"tcl": {"mean": {"1": 97.48148}}, "ce": {"mean": {"1": 94.2222}}}}
    assert check_digits("one inference step: TCL 97.5 %, plain CE 94.2 %", data) == 2
    with pytest.raises(AssertionError, match="TCL's accuracy"):
        check_digits("one inference step: TCL 97.9 %, plain CE 94.2 %", data)
    with pytest.raises(AssertionError, match="no longer reads"):
        check_digits("one inference step: TCL 97.9 % and CE 94.2 %", data)
    assert_shown("6.70", 6.7049, "x")
    with pytest.raises(AssertionError):
        assert_shown("6.70", 6.706, "x")
