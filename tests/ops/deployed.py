"""A deployed stack for the ops commands' tests: its outputs, and moto for every service behind them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.exceptions import ClientError

from tests.ops.support import REGION


@dataclass
class Outputs:
    """CloudFormation's DescribeStacks for stacks that exist (moto cannot deploy this project's stacks)."""

    stacks: dict[str, dict[str, str]]

    def describe_stacks(self, StackName: str) -> dict[str, Any]:
        if StackName not in self.stacks:
            error = {"Code": "ValidationError", "Message": f"Stack with id {StackName} does not exist"}
            raise ClientError({"Error": error}, "DescribeStacks")
        outputs = [{"OutputKey": key, "OutputValue": value} for key, value in self.stacks[StackName].items()]
        return {"Stacks": [{"StackName": StackName, "Outputs": outputs}]}


@dataclass
class DeployedSession:
    """What the commands need of a boto3 session: the stacks' outputs, and moto clients for the rest."""

    outputs: Outputs
    region_name: str = REGION
    created: list[str] = field(default_factory=list)

    def client(self, service: str) -> Any:
        self.created.append(service)
        if service == "cloudformation":
            return self.outputs
        return boto3.client(service, region_name=self.region_name)
