"""`make checkov`'s gate: a failed check passes only when the checklist lists it with a reason."""

from __future__ import annotations

import io

from ops.checkov_gate import CHECKLIST, accepted_findings, gate

TABLE = """# x
## checkov findings that do not apply

| Check | Resource type | Why it does not apply |
|---|---|---|
| CKV_AWS_27 | AWS::SQS::Queue | SSE-SQS is on. |
| CKV_AWS_21 | AWS::S3::Bucket | Not needed. |

## Next section
| CKV_AWS_99 | AWS::X::Y | outside the section |
"""


def report(*failed: tuple[str, str]) -> dict:
    checks = [
        {"check_id": check, "resource": f"{resource}.Logical{index}"} for index, (check, resource) in enumerate(failed)
    ]
    return {"check_type": "cloudformation", "results": {"failed_checks": checks}}


def test_the_table_is_read_from_its_section_only() -> None:
    assert accepted_findings(TABLE) == {
        ("CKV_AWS_27", "AWS::SQS::Queue"): "SSE-SQS is on.",
        ("CKV_AWS_21", "AWS::S3::Bucket"): "Not needed.",
    }


def test_listed_findings_pass_and_stale_rows_are_named() -> None:
    out = io.StringIO()
    assert gate([report(("CKV_AWS_27", "AWS::SQS::Queue"))], TABLE, out) == 0
    assert "no longer failing (remove its row from the checklist): CKV_AWS_21 AWS::S3::Bucket" in out.getvalue()


def test_an_unlisted_finding_fails_naming_the_resources() -> None:
    out = io.StringIO()
    reports = [[report(("CKV_AWS_27", "AWS::SQS::Queue")), report(("CKV_AWS_27", "AWS::SNS::Topic"))]]
    assert gate(reports, TABLE, out) == 1
    assert "NOT ACCEPTED CKV_AWS_27 on AWS::SNS::Topic: AWS::SNS::Topic.Logical0" in out.getvalue()


def test_the_real_checklist_has_a_reason_for_every_accepted_finding() -> None:
    accepted = accepted_findings(CHECKLIST.read_text())
    assert ("CKV_AWS_27", "AWS::SQS::Queue") in accepted
    assert all(len(reason) > 40 for reason in accepted.values())
