"""The checks `make preflight` runs against the user's account: each reads, never writes, and explains what it finds.

Every check takes a `Context` (the configuration and boto3 clients made by `ops.preflight`) and returns one
`CheckResult`. A check that AWS refuses (AccessDenied) or cannot answer becomes a warning that names the
permission it needed; only a condition that makes the deploy fail is a failure. The rows of
docs/DEPLOY-CHECKLIST.md that no template can show point here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from infra.components.endpoint_metrics import VARIANT_NAME
from infra.components.sd_endpoint import DLC_REPOSITORY, DLC_TAG, dlc_account_for
from infra.components.stage_function import POWERTOOLS_PARAMETER, POWERTOOLS_VERSION
from infra.config import PipelineConfig
from infra.pipeline import Handler, routes

BOOTSTRAP_STACK = "CDKToolkit"
# Where `cdk bootstrap` records its version; the synthesized templates' CheckBootstrapVersion rule refuses < 6.
BOOTSTRAP_VERSION_PARAMETER = "/cdk-bootstrap/hnb659fds/version"
MIN_BOOTSTRAP_VERSION = 6
INFRA_STACK = "InfraStack"
MODEL_BUCKET_OUTPUT = "ModelBucketName"
SAGEMAKER_QUOTA_NAME = "{instance_type} for endpoint usage"
# Amazon Transcribe's quota of batch jobs running at once (Service Quotas, service code `transcribe`).
TRANSCRIBE_JOBS_QUOTA_WORDS = ("concurrent", "batch transcription jobs")
DENIED_CODES = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnrecognizedClientException"}
)


class Status(StrEnum):
    """What a check found."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict in plain words, and what to do about it."""

    name: str
    status: Status
    detail: str
    fix: str | None = None


@dataclass
class Context:
    """What every check reads: the configuration, the resolved account/region, and a client per service."""

    config: PipelineConfig
    region: str
    client: Callable[[str], Any]
    account: str | None = None


class CouldNotCheck(Exception):
    """AWS refused or could not answer a read; the message names the permission needed."""


def call(
    ctx: Context, service: str, operation: str, permission: str, *, absent: tuple[str, ...] = (), **kwargs: Any
) -> dict[str, Any] | None:
    """One read-only API call; None when AWS answers with an error code in `absent` (the thing does not exist).

    An AccessDenied, or an API this region or endpoint cannot answer, becomes CouldNotCheck naming `permission`.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return getattr(ctx.client(service), operation)(**kwargs)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in absent:
            return None
        if code in DENIED_CODES:
            raise CouldNotCheck(f"{code} (needs permission {permission})") from error
        raise CouldNotCheck(f"{operation} answered {code}: {error} (needs permission {permission})") from error
    except BotoCoreError as error:
        raise CouldNotCheck(f"{type(error).__name__}: {error} (needs permission {permission})") from error


def check_dlc_region(ctx: Context) -> CheckResult:
    """The region has the Hugging Face PyTorch inference DLC (the same region table the endpoint construct reads)."""
    name = "Deep Learning Container"
    account = dlc_account_for(ctx.region)
    if account is None:
        return CheckResult(
            name,
            Status.FAIL,
            f"the CDK knows no Deep Learning Containers account in {ctx.region}: the endpoint stack cannot name "
            f"the {DLC_REPOSITORY} image there, and synth fails",
            "deploy to a region that has SageMaker and the DLCs, e.g. `cdk -c region=eu-west-1` (or AWS_REGION)",
        )
    image = f"{account}.dkr.ecr.{ctx.region}.amazonaws.com/{DLC_REPOSITORY}:{DLC_TAG}"
    return CheckResult(name, Status.OK, f"{ctx.region} serves {image}")


def check_bootstrap(ctx: Context) -> CheckResult:
    """The CDK bootstrap stack exists, is healthy, and is recent enough for these templates."""
    name = "CDK bootstrap"
    fix = f"make bootstrap   (npx cdk bootstrap aws://{ctx.account or '<account>'}/{ctx.region})"
    described = call(
        ctx,
        "cloudformation",
        "describe_stacks",
        "cloudformation:DescribeStacks",
        absent=("ValidationError",),
        StackName=BOOTSTRAP_STACK,
    )
    if described is None:
        return CheckResult(
            name,
            Status.FAIL,
            f"no {BOOTSTRAP_STACK} stack in {ctx.region}: `cdk deploy` has no asset bucket or deploy roles",
            fix,
        )
    status = described["Stacks"][0]["StackStatus"]
    if status.endswith("_FAILED") or status in ("ROLLBACK_COMPLETE", "DELETE_COMPLETE"):
        return CheckResult(name, Status.FAIL, f"{BOOTSTRAP_STACK} is {status}", f"delete it in the console, then {fix}")
    value = call(
        ctx, "ssm", "get_parameter", "ssm:GetParameter", absent=("ParameterNotFound",), Name=BOOTSTRAP_VERSION_PARAMETER
    )
    if value is None:
        return CheckResult(name, Status.FAIL, f"{BOOTSTRAP_VERSION_PARAMETER} is missing", fix)
    version = int(value["Parameter"]["Value"])
    if version < MIN_BOOTSTRAP_VERSION:
        return CheckResult(
            name,
            Status.FAIL,
            f"bootstrap version {version}; these templates need {MIN_BOOTSTRAP_VERSION} or later",
            fix,
        )
    return CheckResult(name, Status.OK, f"{BOOTSTRAP_STACK} is {status}, version {version}")


def check_powertools_layer(ctx: Context) -> CheckResult:
    """AWS publishes the Powertools layer the functions use in this region (a public SSM parameter names it)."""
    name = "Powertools layer"
    found = call(
        ctx, "ssm", "get_parameter", "ssm:GetParameter", absent=("ParameterNotFound",), Name=POWERTOOLS_PARAMETER
    )
    if found is None:
        return CheckResult(
            name,
            Status.FAIL,
            f"{POWERTOOLS_PARAMETER} does not exist in {ctx.region}: the functions' layer cannot be resolved",
            f"pick a region where AWS publishes Powertools {POWERTOOLS_VERSION}, or change POWERTOOLS_VERSION "
            "in infra/components/stage_function.py (and requirements-dev.txt) to one published there",
        )
    return CheckResult(name, Status.OK, f"Powertools {POWERTOOLS_VERSION} is published in {ctx.region}")


def _quotas(ctx: Context, service_code: str) -> Iterator[dict[str, Any]]:
    """Applied quota values of a service, then AWS's defaults (quotas nobody changed may only appear there)."""
    for operation, permission in (
        ("list_service_quotas", "servicequotas:ListServiceQuotas"),
        ("list_aws_default_service_quotas", "servicequotas:ListAWSDefaultServiceQuotas"),
    ):
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"ServiceCode": service_code, "MaxResults": 100}
            if token:
                kwargs["NextToken"] = token
            page = call(ctx, "service-quotas", operation, permission, **kwargs)
            yield from page.get("Quotas", [])
            token = page.get("NextToken")
            if not token:
                break


def _find_quota(ctx: Context, service_code: str, match: Callable[[str], bool]) -> dict[str, Any] | None:
    return next((quota for quota in _quotas(ctx, service_code) if match(quota.get("QuotaName", ""))), None)


def check_endpoint_quota(ctx: Context) -> CheckResult:
    """The account may run the configured instance type for endpoints (often 0 in new accounts)."""
    instance_type = ctx.config.instance_type
    quota_name = SAGEMAKER_QUOTA_NAME.format(instance_type=instance_type)
    name = "SageMaker endpoint quota"
    quota = _find_quota(ctx, "sagemaker", lambda text: text.lower() == quota_name.lower())
    if quota is None:
        return CheckResult(
            name,
            Status.WARN,
            f"Service Quotas lists no quota named '{quota_name}' in {ctx.region}: is {instance_type} offered here?",
            "check the instance type is available for SageMaker hosting in this region (instanceType)",
        )
    value = int(quota.get("Value", 0))
    wanted = ctx.config.max_instances
    if value >= wanted:
        return CheckResult(name, Status.OK, f"'{quota_name}' is {value} (maxInstances {wanted})")
    command = (
        f"aws service-quotas request-service-quota-increase --service-code sagemaker "
        f"--quota-code {quota['QuotaCode']} --desired-value {wanted} --region {ctx.region}"
    )
    fix = (
        f"Service Quotas console > AWS services > Amazon SageMaker > '{quota_name}' > Request increase at account "
        f"level, or: {command}"
    )
    if value == 0:
        detail = (
            f"'{quota_name}' is 0 in {ctx.region}: creating the endpoint fails with ResourceLimitExceeded "
            "(and the endpoint stack rolls back after several minutes)"
        )
        return CheckResult(name, Status.FAIL, detail, fix)
    detail = f"'{quota_name}' is {value}, below maxInstances={wanted}: scaling stops at {value}"
    return CheckResult(name, Status.WARN, detail, fix)


def check_transcribe_quota(ctx: Context) -> CheckResult:
    """Transcribe's concurrent-job quota against the most jobs the trigger can start at once."""
    name = "Transcribe concurrent jobs"
    route = next(route for route in routes(ctx.config) if route.handler is Handler.TRANSCRIBE_TRIGGER)
    burst = route.queue.max_concurrency * route.queue.batch_size
    quota = _find_quota(
        ctx, "transcribe", lambda text: all(word in text.lower() for word in TRANSCRIBE_JOBS_QUOTA_WORDS)
    )
    if quota is None:
        return CheckResult(name, Status.WARN, "Service Quotas lists no concurrent batch-job quota for Transcribe")
    value = int(quota.get("Value", 0))
    detail = (
        f"'{quota['QuotaName']}' is {value}; transcribeTriggerConcurrency={route.queue.max_concurrency} x "
        f"{route.queue.batch_size} uploads per batch can start {burst} jobs at once"
    )
    if value >= burst:
        return CheckResult(name, Status.OK, detail)
    return CheckResult(
        name,
        Status.WARN,
        f"{detail}: starts beyond the quota are refused (LimitExceededException) and retried from the queue, "
        f"at most {route.queue.max_receive_count} times before they are dead-lettered",
        f"lower transcribeTriggerConcurrency (cdk -c transcribeTriggerConcurrency=...) or request more: aws "
        f"service-quotas request-service-quota-increase --service-code transcribe --quota-code {quota['QuotaCode']} "
        f"--desired-value {burst} --region {ctx.region}",
    )


def check_model_archive(ctx: Context) -> CheckResult:
    """The model archive the endpoint serves is in the model bucket before the endpoint deploys."""
    name = "Model archive"
    key = ctx.config.model_data_key
    stacks = call(
        ctx,
        "cloudformation",
        "describe_stacks",
        "cloudformation:DescribeStacks",
        absent=("ValidationError",),
        StackName=INFRA_STACK,
    )
    if stacks is None:
        return CheckResult(
            name,
            Status.SKIPPED,
            f"{INFRA_STACK} is not deployed yet, so there is no model bucket to look in",
            "make deploy-infra, then make upload-model MODEL_DIR=... before make deploy-endpoint",
        )
    outputs = {item["OutputKey"]: item["OutputValue"] for item in stacks["Stacks"][0].get("Outputs", [])}
    bucket = outputs.get(MODEL_BUCKET_OUTPUT)
    if not bucket:
        return CheckResult(name, Status.WARN, f"{INFRA_STACK} has no {MODEL_BUCKET_OUTPUT} output", "make deploy-infra")
    # HeadObject answers a missing key with a bare 404 (403 without s3:ListBucket, reported as could not check).
    head = call(
        ctx, "s3", "head_object", "s3:GetObject and s3:ListBucket", absent=("404", "NoSuchKey"), Bucket=bucket, Key=key
    )
    if head is None:
        return CheckResult(
            name,
            Status.FAIL,
            f"s3://{bucket}/{key} does not exist: the endpoint would fail to download its model and roll back",
            "make upload-model MODEL_DIR=path/to/stable-diffusion-v1-4 (or set modelDataKey to the uploaded key)",
        )
    size_gb = head.get("ContentLength", 0) / 1e9
    return CheckResult(name, Status.OK, f"s3://{bucket}/{key} ({size_gb:.1f} GB)")


def check_instance_type_change(ctx: Context) -> CheckResult:
    """An existing autoscaled endpoint whose instance type differs: UpdateEndpoint would fail (AWS's rule)."""
    name = "Endpoint instance type"
    endpoint = ctx.config.endpoint_name
    # SageMaker answers an unknown endpoint name with ValidationException ("Could not find endpoint").
    described = call(
        ctx,
        "sagemaker",
        "describe_endpoint",
        "sagemaker:DescribeEndpoint",
        absent=("ValidationException",),
        EndpointName=endpoint,
    )
    if described is None:
        return CheckResult(name, Status.OK, f"no endpoint named {endpoint} yet: the deploy creates it")
    config = call(
        ctx,
        "sagemaker",
        "describe_endpoint_config",
        "sagemaker:DescribeEndpointConfig",
        EndpointConfigName=described["EndpointConfigName"],
    )
    current = {variant.get("InstanceType") for variant in config.get("ProductionVariants", [])}
    wanted = ctx.config.instance_type
    if current <= {wanted}:
        return CheckResult(name, Status.OK, f"{endpoint} runs {wanted}, as configured")
    resource_id = f"endpoint/{endpoint}/variant/{VARIANT_NAME}"
    targets = call(
        ctx,
        "application-autoscaling",
        "describe_scalable_targets",
        "application-autoscaling:DescribeScalableTargets",
        ServiceNamespace="sagemaker",
        ResourceIds=[resource_id],
    ).get("ScalableTargets", [])
    change = f"{endpoint} runs {', '.join(sorted(t for t in current if t))}; the configuration says {wanted}"
    if not targets:
        return CheckResult(name, Status.OK, f"{change}: not autoscaled, so the update may change it")
    return CheckResult(
        name,
        Status.FAIL,
        f"{change}, and {resource_id} is registered with Application Auto Scaling: SageMaker refuses to change "
        "the instance type of an autoscaled variant, so the update fails and the stack rolls back",
        "deregister/destroy-endpoint first: `make destroy-endpoint` (removes the endpoint and its scaling), then "
        "`make deploy-endpoint`; or keep instanceType at the running type",
    )
