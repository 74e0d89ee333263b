"""A stubbed AWS account for the preflight tests: real boto3 clients with botocore Stubbers, no network."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.stub import ANY, Stubber

from infra.components.stage_function import POWERTOOLS_PARAMETER
from infra.config import PipelineConfig
from ops.preflight import report, run_checks
from ops.preflight_checks import BOOTSTRAP_VERSION_PARAMETER, CheckResult, Status

ACCOUNT = "123456789012"
REGION = "eu-west-1"
MODEL_BUCKET = "infrastack-bucketsmodel-abc123"
SAGEMAKER_QUOTA_CODE = "L-D6E4EA8A"  # a made-up code: the check must echo whatever Service Quotas returns
TRANSCRIBE_QUOTA_CODE = "L-0E8B4D6C"


@dataclass
class Account:
    """What the stubbed account holds; each field is one condition a test flips."""

    credentials: bool = True
    bootstrapped: bool = True
    bootstrap_version: str = "30"
    powertools_published: bool = True
    endpoint_quota: float | None = 1.0
    transcribe_quota: float = 250.0
    infra_deployed: bool = True
    model_uploaded: bool = True
    # (instance type, autoscaled) of an endpoint that already exists; None: no endpoint yet.
    existing_endpoint: tuple[str, bool] | None = None
    denied: set[str] = field(default_factory=set)


def _error(stubber: Stubber, operation: str, code: str, status: int = 400) -> None:
    stubber.add_client_error(operation, service_error_code=code, http_status_code=status)


def _stub(account: Account, config: PipelineConfig) -> dict[str, tuple[Any, Stubber]]:
    """One stubbed client per service, with the responses queued in the order the checks call them."""
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)
    clients = {
        name: session.client(name)
        for name in ("sts", "cloudformation", "ssm", "service-quotas", "s3", "sagemaker", "application-autoscaling")
    }
    stubs = {name: Stubber(client) for name, client in clients.items()}
    sts, cfn, ssm, quotas, s3, sagemaker, scaling = (stubs[name] for name in clients)
    sts.add_response(
        "get_caller_identity",
        {"Account": ACCOUNT, "Arn": f"arn:aws:iam::{ACCOUNT}:user/dev", "UserId": "AIDAEXAMPLE"},
    )
    if account.bootstrapped:
        cfn.add_response(
            "describe_stacks",
            {"Stacks": [_stack("CDKToolkit", "UPDATE_COMPLETE", [])]},
            {"StackName": "CDKToolkit"},
        )
        ssm.add_response(
            "get_parameter",
            {"Parameter": {"Name": BOOTSTRAP_VERSION_PARAMETER, "Value": account.bootstrap_version, "Type": "String"}},
            {"Name": BOOTSTRAP_VERSION_PARAMETER},
        )
    else:
        _error(cfn, "describe_stacks", "ValidationError")
    if account.powertools_published:
        ssm.add_response(
            "get_parameter",
            {"Parameter": {"Name": POWERTOOLS_PARAMETER, "Value": "arn:aws:lambda:layer", "Type": "String"}},
            {"Name": POWERTOOLS_PARAMETER},
        )
    else:
        _error(ssm, "get_parameter", "ParameterNotFound")
    if "servicequotas:ListServiceQuotas" in account.denied:
        _error(quotas, "list_service_quotas", "AccessDeniedException")
    else:
        # Two pages of applied values: the configured type is on the second; unlisted, the defaults are read too.
        first_page: dict[str, Any] = {"Quotas": [_quota("ml.p3.2xlarge for endpoint usage", "L-1", 0)]}
        if account.endpoint_quota is not None:
            first_page["NextToken"] = "page-2"
        quotas.add_response("list_service_quotas", first_page, _quota_params("sagemaker"))
        if account.endpoint_quota is not None:
            wanted = _quota(f"{config.instance_type} for endpoint usage", SAGEMAKER_QUOTA_CODE, account.endpoint_quota)
            quotas.add_response("list_service_quotas", {"Quotas": [wanted]}, _quota_params("sagemaker", "page-2"))
        else:
            quotas.add_response("list_aws_default_service_quotas", {"Quotas": []}, _quota_params("sagemaker"))
    quotas.add_response(
        "list_service_quotas",
        {
            "Quotas": [
                _quota(
                    "Maximum number of concurrent batch transcription jobs",
                    TRANSCRIBE_QUOTA_CODE,
                    account.transcribe_quota,
                )
            ]
        },
        _quota_params("transcribe"),
    )
    if account.infra_deployed:
        outputs = [{"OutputKey": "ModelBucketName", "OutputValue": MODEL_BUCKET}]
        cfn.add_response("describe_stacks", {"Stacks": [_stack("InfraStack", "CREATE_COMPLETE", outputs)]})
        if account.model_uploaded:
            s3.add_response(
                "head_object", {"ContentLength": 4_200_000_000}, {"Bucket": MODEL_BUCKET, "Key": config.model_data_key}
            )
        else:
            _error(s3, "head_object", "404", 404)
    else:
        _error(cfn, "describe_stacks", "ValidationError")
    if account.existing_endpoint is None:
        _error(sagemaker, "describe_endpoint", "ValidationException")
    else:
        instance_type, autoscaled = account.existing_endpoint
        sagemaker.add_response("describe_endpoint", _endpoint(config.endpoint_name), {"EndpointName": ANY})
        sagemaker.add_response(
            "describe_endpoint_config",
            {
                "EndpointConfigName": "cfg-1",
                "EndpointConfigArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint-config/cfg-1",
                "ProductionVariants": [{"VariantName": "AllTraffic", "InstanceType": instance_type}],
                "CreationTime": "2026-01-01T00:00:00Z",
            },
            {"EndpointConfigName": "cfg-1"},
        )
        if instance_type != config.instance_type:
            target = {
                "ServiceNamespace": "sagemaker",
                "ResourceId": f"endpoint/{config.endpoint_name}/variant/AllTraffic",
                "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
                "MinCapacity": 0,
                "MaxCapacity": 1,
                "RoleARN": "arn:aws:iam::123456789012:role/slr",
                "CreationTime": "2026-01-01T00:00:00Z",
            }
            scaling.add_response(
                "describe_scalable_targets",
                {"ScalableTargets": [target] if autoscaled else []},
                {
                    "ServiceNamespace": "sagemaker",
                    "ResourceIds": [f"endpoint/{config.endpoint_name}/variant/AllTraffic"],
                },
            )
    return {name: (clients[name], stubs[name]) for name in clients}


def _quota(name: str, code: str, value: float) -> dict[str, Any]:
    return {"QuotaName": name, "QuotaCode": code, "Value": value, "ServiceCode": "x"}


def _quota_params(service_code: str, token: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"ServiceCode": service_code, "MaxResults": 100}
    if token:
        params["NextToken"] = token
    return params


def _stack(name: str, status: str, outputs: list[dict[str, str]]) -> dict[str, Any]:
    return {"StackName": name, "StackStatus": status, "CreationTime": "2026-01-01T00:00:00Z", "Outputs": outputs}


def _endpoint(name: str) -> dict[str, Any]:
    return {
        "EndpointName": name,
        "EndpointArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/{name}",
        "EndpointConfigName": "cfg-1",
        "EndpointStatus": "InService",
        "CreationTime": "2026-01-01T00:00:00Z",
        "LastModifiedTime": "2026-01-01T00:00:00Z",
    }


@dataclass
class Run:
    """The results of one preflight run, its printed report and exit status."""

    results: list[CheckResult]
    text: str
    status: int

    def by_name(self, name: str) -> CheckResult:
        """The one result of the check called `name`."""
        (found,) = [result for result in self.results if result.name == name]
        return found

    def statuses(self) -> dict[str, Status]:
        """Every check's status by name."""
        return {result.name: result.status for result in self.results}


@contextmanager
def stubbed(
    account: Account, config: PipelineConfig, region: str = REGION, *, every_call: bool = True
) -> Iterator[Run]:
    """Run every check against the stubbed account; with `every_call`, every queued response must be used."""
    stubs = _stub(account, config)
    for _, stubber in stubs.values():
        stubber.activate()
    try:
        results = run_checks(config, region, lambda service: stubs[service][0])
        out = io.StringIO()
        status = report(results, out)
        yield Run(results, out.getvalue(), status)
        for _, stubber in stubs.values():
            if every_call:
                stubber.assert_no_pending_responses()
    finally:
        for _, stubber in stubs.values():
            stubber.deactivate()
