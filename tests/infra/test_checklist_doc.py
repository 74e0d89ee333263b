"""docs/DEPLOY-CHECKLIST.md cannot drift from the code: every row cites an AWS source, names files that exist,
and names tests that exist (a renamed or deleted test fails here)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECKLIST = REPO / "docs" / "DEPLOY-CHECKLIST.md"
# AWS's own documentation, and AWS's own repository for the DLC image list.
SOURCE = re.compile(r"https://(docs\.aws\.amazon\.com/|github\.com/aws/)\S+")
TEST_ID = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")
FILE = re.compile(r"`((?:infra|lambdas|ops|local)/[\w/.]*)`")


def requirement_rows() -> list[list[str]]:
    """The cells of each row of the requirements table."""
    section = CHECKLIST.read_text().split("## Requirements", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].isdigit():
            rows.append(cells)
    return rows


def defined_tests(path: Path) -> set[str]:
    """Names of the test functions a test module defines."""
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test")}


def test_the_checklist_has_its_rows_in_order() -> None:
    numbers = [int(row[0]) for row in requirement_rows()]
    assert numbers == list(range(1, len(numbers) + 1))
    assert len(numbers) >= 20


@pytest.mark.parametrize("row", requirement_rows(), ids=lambda row: f"row-{row[0]}")
def test_each_row_cites_aws_and_names_existing_files_and_tests(row: list[str]) -> None:
    number, requirement, source, satisfied, asserted = row
    assert requirement, f"row {number} states no requirement"
    assert SOURCE.search(source), f"row {number} has no AWS documentation source"
    files = FILE.findall(satisfied)
    assert files, f"row {number} names no file that satisfies it"
    for name in files:
        assert (REPO / name).exists(), f"row {number}: {name} does not exist"
    tests = TEST_ID.findall(asserted)
    assert tests, f"row {number} names no test"
    for module, function in tests:
        path = REPO / module
        assert path.exists(), f"row {number}: {module} does not exist"
        assert function in defined_tests(path), f"row {number}: {module}::{function} does not exist"
