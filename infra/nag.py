"""cdk-nag (AwsSolutions) on every synth, and the one way we acknowledge a finding."""

from __future__ import annotations

from typing import Any

from aws_cdk import Acknowledgment, App, Validations
from cdk_nag import AwsSolutionsChecks
from constructs import IConstruct


def apply_nag(app: App) -> None:
    """Check the whole app; any unacknowledged finding makes synth fail."""
    Validations.of(app).add_plugins(AwsSolutionsChecks(app, verbose=True))


def acknowledge(scope: IConstruct, rule_id: str, reason: str) -> None:
    """Accept one finding (e.g. `AwsSolutions-IAM5[Resource::...]`) on `scope`, with a reviewer-grade reason."""
    Validations.of(scope).acknowledge(Acknowledgment(id=rule_id, reason=reason))


def render_intrinsic(value: Any) -> str:
    """Render a resolved ARN the way cdk-nag names findings: `<Logical.Arn>/*`, `arn:<AWS::Partition>:...`.

    A value imported from another stack renders as its export name (`InfraStack:ExportsOutput...`).
    """
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((function, argument),) = value.items()
        if function == "Fn::Join":
            separator, parts = argument
            return separator.join(render_intrinsic(part) for part in parts)
        if function == "Fn::GetAtt":
            return f"<{argument[0]}.{argument[1]}>"
        if function == "Ref":
            return f"<{argument}>"
        if function == "Fn::ImportValue" and isinstance(argument, str):
            return argument
        if function == "Fn::Sub" and isinstance(argument, str):
            # cdk-nag writes `${AWS::AccountId}` as `<AWS::AccountId>` (the CDK asset bucket of an env-agnostic app).
            return argument.replace("${", "<").replace("}", ">")
    raise ValueError(f"cannot render {value!r} as a cdk-nag resource name")
