"""`make checkov`'s gate: every check checkov fails must be listed, with its reason, in docs/DEPLOY-CHECKLIST.md.

Reads checkov's JSON reports (`checkov -o json`) and the checklist's "checkov findings that do not apply" table
(rows `| CKV_AWS_27 | AWS::SQS::Queue | reason |`). A failed (check, resource type) pair with no row fails the
gate: fix the finding, or add a row whose reason a security reviewer would accept. Rows no report mentions any
more are printed so they can be removed.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

CHECKLIST = Path(__file__).resolve().parents[1] / "docs" / "DEPLOY-CHECKLIST.md"
ACCEPTED_HEADING = "## checkov findings that do not apply"
_ROW = re.compile(r"^\|\s*`?(CKV2?_AWS_\d+)`?\s*\|\s*`?([A-Za-z0-9:]+)`?\s*\|\s*(.+?)\s*\|\s*$")


def accepted_findings(markdown: str) -> dict[tuple[str, str], str]:
    """(check id, resource type) -> reason, from the table under ACCEPTED_HEADING."""
    if ACCEPTED_HEADING not in markdown:
        raise ValueError(f"the checklist has no '{ACCEPTED_HEADING}' section")
    section = markdown.split(ACCEPTED_HEADING, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = _ROW.match(line.strip())
        if match:
            rows[(match.group(1), match.group(2))] = match.group(3)
    return rows


def failed_findings(reports: Iterable[Any]) -> dict[tuple[str, str], set[str]]:
    """(check id, resource type) -> the resources (`Type.LogicalId`) that failed it, from checkov JSON reports."""
    found: dict[tuple[str, str], set[str]] = {}
    for report in reports:
        for part in report if isinstance(report, list) else [report]:
            for check in part.get("results", {}).get("failed_checks", []):
                resource = check["resource"]
                found.setdefault((check["check_id"], resource.split(".", 1)[0]), set()).add(resource)
    return found


def gate(reports: Iterable[Any], markdown: str, out: TextIO) -> int:
    """Print unlisted and stale findings; 1 if any failed check is not accepted in the checklist."""
    accepted = accepted_findings(markdown)
    failed = failed_findings(reports)
    unlisted = sorted(set(failed) - set(accepted))
    for check_id, resource_type in unlisted:
        resources = ", ".join(sorted(failed[(check_id, resource_type)]))
        out.write(f"NOT ACCEPTED {check_id} on {resource_type}: {resources}\n")
    for check_id, resource_type in sorted(set(accepted) - set(failed)):
        out.write(f"no longer failing (remove its row from the checklist): {check_id} {resource_type}\n")
    listed = len(set(failed) & set(accepted))
    out.write(
        f"checkov: {len(failed)} failed check kinds, {listed} accepted in {CHECKLIST.name}, {len(unlisted)} not\n"
    )
    return 1 if unlisted else 0


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    """python -m ops.checkov_gate REPORT.json [...]"""
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        out.write("usage: python -m ops.checkov_gate REPORT.json [...]\n")
        return 2
    reports = [json.loads(Path(path).read_text()) for path in paths]
    return gate(reports, CHECKLIST.read_text(), out)


if __name__ == "__main__":
    sys.exit(main())
