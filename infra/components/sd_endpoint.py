"""A SageMaker endpoint (real-time or asynchronous) serving Stable Diffusion from the Hugging Face PyTorch DLC."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Duration, RemovalPolicy, Stack, Token
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sagemaker as sagemaker
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from aws_cdk.region_info import Fact, FactName
from constructs import Construct

from infra.components.endpoint_metrics import VARIANT_NAME
from infra.components.stage_function import retention_days
from infra.config import ConfigError, PipelineConfig
from infra.model_config import container_environment
from infra.nag import acknowledge, render_intrinsic
from infra.pipeline import ASYNC_FAILURE_PREFIX, ASYNC_OUTPUT_PREFIX, ASYNC_REQUEST_PREFIX

DLC_REPOSITORY = "huggingface-pytorch-inference"
# Hugging Face PyTorch inference DLC (torch 2.6, transformers 4.49, diffusers 0.32.2, toolkit 2.4.1);
# stable-diffusion-custom-inference/code/requirements.txt pins diffusers to what it ships.
DLC_TAG = "2.6.0-transformers4.49.0-gpu-py312-cu124-ubuntu22.04"
# Start-up limits of the production variant (SageMaker allows 60..3600 s for each; API ProductionVariant).
# modelSource=s3: SageMaker downloads and unpacks the whole archive (4 GB for SD v1.x, 7 GB for SDXL in fp16)
# before the container starts, then model_fn loads it from local disk.
MODEL_DOWNLOAD_TIMEOUT_S = 1200
STARTUP_HEALTH_CHECK_TIMEOUT_S = 900
# modelSource=hub: the archive holds only code/ (kilobytes), and model_fn downloads the weights before the
# container answers its first health check: SDXL's fp16 files (~7 GB) at a slow 20 MB/s take ~6 min, loading
# ~2 more; 30 min leaves room without making a broken container hold a deploy for the full hour.
HUB_MODEL_DOWNLOAD_TIMEOUT_S = 300
HUB_STARTUP_HEALTH_CHECK_TIMEOUT_S = 1800


# One request at a time per instance: one copy of the model fills the GPU, a second would only queue inside it.
ASYNC_MAX_CONCURRENT_INVOCATIONS_PER_INSTANCE = 1


@dataclass(frozen=True)
class AsyncInference:
    """Where an asynchronous endpoint reads requests, writes results, and reports them (all from InfraStack)."""

    # The transcripts bucket (its ASYNC_* prefixes), as values InfraStack exports: see infra/app.py.
    bucket_arn: str
    bucket_name: str
    success_topic: sns.ITopic
    error_topic: sns.ITopic

    def s3_uri(self, prefix: str) -> str:
        """`s3://<bucket>/<prefix>`."""
        return f"s3://{self.bucket_name}/{prefix}"

    def objects_arn(self, prefix: str) -> str:
        """The ARN pattern of every object under `prefix`."""
        return f"{self.bucket_arn}/{prefix}*"


def dlc_account_for(region: str) -> str | None:
    """AWS's DLC account for a region from the CDK's region table, or None where it knows none (`ops.preflight`)."""
    return Fact.find(region, FactName.DLC_REPOSITORY_ACCOUNT)


def dlc_account(stack: Stack) -> str:
    """AWS's account that publishes the Deep Learning Containers in the stack's region."""
    if not Token.is_unresolved(stack.region) and dlc_account_for(stack.region) is None:
        raise ConfigError(
            f"region {stack.region!r}: the CDK knows no Deep Learning Containers account there; deploy to another "
            "region (-c region=...) or register it with aws_cdk.region_info.Fact.register in infra/app.py"
        )
    return stack.regional_fact(FactName.DLC_REPOSITORY_ACCOUNT)


def dlc_image_uri(stack: Stack) -> str:
    """The DLC image of the stack's region, with AWS's account for it looked up by the CDK."""
    return f"{dlc_account(stack)}.dkr.ecr.{stack.region}.{stack.url_suffix}/{DLC_REPOSITORY}:{DLC_TAG}"


class StableDiffusionEndpoint(Construct):
    """CfnModel + CfnEndpointConfig + CfnEndpoint, with an execution role scoped to one model object."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: PipelineConfig,
        model_bucket: s3.IBucket,
        async_inference: AsyncInference | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.role = iam.Role(
            self,
            "ExecutionRole",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description="speech-to-image endpoint: read one model archive, pull the DLC, write its logs",
        )
        # SageMaker downloads the archive with this role in both sources (for the hub it is the code-only one).
        # The model bucket is SSE-S3: no key to grant.
        model_object_arn = model_bucket.arn_for_objects(config.model_data_key)
        self.role.add_to_principal_policy(iam.PolicyStatement(actions=["s3:GetObject"], resources=[model_object_arn]))
        token_secret_arn = self._allow_hub_token(config.model.hf_token_secret_name)
        ecr.Repository.from_repository_attributes(
            self,
            "Dlc",
            repository_arn=stack.format_arn(
                service="ecr", account=dlc_account(stack), resource="repository", resource_name=DLC_REPOSITORY
            ),
            repository_name=DLC_REPOSITORY,
        ).grant_pull(self.role)
        # Part of AWS's documented execution-role set for hosting (docs/DEPLOY-CHECKLIST.md): the container may
        # publish metrics. PutMetricData supports no resource-level permissions.
        self.role.add_to_principal_policy(iam.PolicyStatement(actions=["cloudwatch:PutMetricData"], resources=["*"]))
        acknowledge(
            self.role,
            "AwsSolutions-IAM5[Resource::*]",
            "Only ecr:GetAuthorizationToken and cloudwatch:PutMetricData are granted on '*': neither action supports "
            "resource-level permissions (AWS Service Authorization Reference), and both are in AWS's documented "
            "SageMaker execution-role set. Image pulls are limited to the DLC repository's ARN.",
        )
        # SageMaker writes endpoint logs to this fixed group; owning it sets the retention.
        # Always destroyed with the stack, so the endpoint can be redeployed alone later.
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            log_group_name=f"/aws/sagemaker/Endpoints/{config.endpoint_name}",
            retention=retention_days(config.log_retention_days),
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.log_group.grant_write(self.role)
        # The rest of the documented logs set, on this group only (it exists before the endpoint does).
        for action in ("logs:CreateLogGroup", "logs:DescribeLogStreams"):
            self.role.add_to_principal_policy(
                iam.PolicyStatement(actions=[action], resources=[self.log_group.log_group_arn])
            )
        if async_inference is not None:
            self._allow_async(async_inference)
        policy = self.role.node.find_child("DefaultPolicy")

        self.model_data_url = f"s3://{model_bucket.bucket_name}/{config.model_data_key}"
        model = sagemaker.CfnModel(
            self,
            "Model",
            execution_role_arn=self.role.role_arn,
            primary_container=sagemaker.CfnModel.ContainerDefinitionProperty(
                image=dlc_image_uri(stack),
                model_data_url=self.model_data_url,
                environment={
                    "SAGEMAKER_PROGRAM": "inference.py",
                    "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
                    "SAGEMAKER_REGION": stack.region,
                    # One worker: one copy of the model fits the T4's 16 GB; one per vCPU would not.
                    "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
                    **container_environment(
                        config.model,
                        instance_type=config.instance_type,
                        time_limit_seconds=config.time_limit_seconds,
                        token_secret_arn=token_secret_arn,
                    ),
                },
            ),
            # No network for a model that comes whole in the archive; the hub source must reach the Hub.
            enable_network_isolation=not config.model.is_hub,
        )
        # The role's policy must exist before SageMaker validates access to the archive.
        model.node.add_dependency(policy)
        endpoint_config = sagemaker.CfnEndpointConfig(
            self,
            "Config",
            production_variants=[
                sagemaker.CfnEndpointConfig.ProductionVariantProperty(
                    variant_name=VARIANT_NAME,
                    model_name=model.attr_model_name,
                    # Realtime runs min_instances, unscaled (1 by default). Async starts with at least one
                    # (SageMaker refuses 0); its scaling policy takes it to min_instances once idle.
                    initial_instance_count=max(1, config.min_instance_count),
                    initial_variant_weight=1.0,
                    instance_type=config.instance_type,
                    model_data_download_timeout_in_seconds=(
                        HUB_MODEL_DOWNLOAD_TIMEOUT_S if config.model.is_hub else MODEL_DOWNLOAD_TIMEOUT_S
                    ),
                    container_startup_health_check_timeout_in_seconds=(
                        HUB_STARTUP_HEALTH_CHECK_TIMEOUT_S if config.model.is_hub else STARTUP_HEALTH_CHECK_TIMEOUT_S
                    ),
                )
            ],
            async_inference_config=_async_config(async_inference) if async_inference is not None else None,
        )
        self.endpoint = sagemaker.CfnEndpoint(
            self,
            "Endpoint",
            endpoint_config_name=endpoint_config.attr_endpoint_config_name,
            # The physical name is the contract with InfraStack's invoke_sd (see PipelineConfig).
            endpoint_name=config.endpoint_name,
            # An autoscaled endpoint keeps its current instance count across a config update instead of
            # going back to InitialInstanceCount (which must be >= 1, so every deploy starts an instance).
            retain_all_variant_properties=True if async_inference is not None else None,
        )
        self.endpoint.node.add_dependency(self.log_group)
        # CreateEndpoint publishes a TestNotification to both topics with the role and FAILS if the role's
        # policy is not attached yet; the model's dependency alone does not say so.
        self.endpoint.node.add_dependency(policy)

    def _allow_hub_token(self, secret_name: str | None) -> str | None:
        """Let the container read the one Secrets Manager secret holding the Hub token; its ARN, or None."""
        if secret_name is None:
            return None
        # Imported by name: the token's value never enters the template, only where to read it.
        secret = secretsmanager.Secret.from_secret_name_v2(self, "HubToken", secret_name)
        # One action on one secret: Secrets Manager ends every secret's ARN in '-' and six random characters,
        # which '-??????' matches exactly (CDK's grant_read would add DescribeSecret, which the container
        # does not need). A secret encrypted with the default aws/secretsmanager key needs no KMS grant.
        secret_arn_pattern = f"{secret.secret_arn}-??????"
        self.role.add_to_principal_policy(
            iam.PolicyStatement(actions=["secretsmanager:GetSecretValue"], resources=[secret_arn_pattern])
        )
        acknowledge(
            self.role,
            f"AwsSolutions-IAM5[Resource::{render_intrinsic(Stack.of(self).resolve(secret_arn_pattern))}]",
            "The wildcard is Secrets Manager's random six-character ARN suffix of the one secret named in "
            "hfTokenSecretName (AWS documents the '-??????' pattern for granting access to a secret by name); "
            "it matches no other secret.",
        )
        return secret.secret_arn

    def _allow_async(self, target: AsyncInference) -> None:
        """Read staged requests, write outputs and failures, and publish to both topics (and use their key)."""
        requests = target.objects_arn(ASYNC_REQUEST_PREFIX)
        results = [target.objects_arn(prefix) for prefix in (ASYNC_OUTPUT_PREFIX, ASYNC_FAILURE_PREFIX)]
        self.role.add_to_principal_policy(iam.PolicyStatement(actions=["s3:GetObject"], resources=[requests]))
        for action in ("s3:PutObject", "s3:AbortMultipartUpload"):
            self.role.add_to_principal_policy(iam.PolicyStatement(actions=[action], resources=results))
        # SageMaker publishes with this role's credentials; grant_publish adds kms:Decrypt and
        # kms:GenerateDataKey* on the topics' key as well.
        target.success_topic.grant_publish(self.role)
        target.error_topic.grant_publish(self.role)
        stack = Stack.of(self)
        reason = (
            "SageMaker names async request, output and failure objects by inference id at run time; the "
            "pattern is limited to one prefix of the pipeline's transcripts bucket."
        )
        for resource in (requests, *results):
            acknowledge(self.role, f"AwsSolutions-IAM5[Resource::{render_intrinsic(stack.resolve(resource))}]", reason)
        acknowledge(
            self.role,
            "AwsSolutions-IAM5[Action::kms:GenerateDataKey*]",
            "Publishing to an SSE-KMS topic needs GenerateDataKey (AWS documents kms:GenerateDataKey* for SNS "
            "publishers); the statement names the topics' own key only.",
        )

    def metric(self, metric_name: str, *, statistic: str, period: Duration) -> cloudwatch.Metric:
        """A SageMaker invocation metric (namespace AWS/SageMaker) of this endpoint's one variant."""
        return cloudwatch.Metric(
            namespace="AWS/SageMaker",
            metric_name=metric_name,
            dimensions_map={"EndpointName": self.endpoint.attr_endpoint_name, "VariantName": VARIANT_NAME},
            statistic=statistic,
            period=period,
        )

    def metric_server_errors(self, period: Duration) -> cloudwatch.Metric:
        """Invocations the model container answered with a 5xx (Sum per period)."""
        return self.metric("Invocation5XXErrors", statistic="Sum", period=period)

    def metric_model_latency(self, period: Duration) -> cloudwatch.Metric:
        """The slowest model response in the period, in MICROseconds (SageMaker's unit for ModelLatency)."""
        return self.metric("ModelLatency", statistic="Maximum", period=period)


def _async_config(target: AsyncInference) -> sagemaker.CfnEndpointConfig.AsyncInferenceConfigProperty:
    """Results and failures under the transcripts bucket's async prefixes, notified to the two topics."""
    return sagemaker.CfnEndpointConfig.AsyncInferenceConfigProperty(
        output_config=sagemaker.CfnEndpointConfig.AsyncInferenceOutputConfigProperty(
            s3_output_path=target.s3_uri(ASYNC_OUTPUT_PREFIX),
            s3_failure_path=target.s3_uri(ASYNC_FAILURE_PREFIX),
            notification_config=sagemaker.CfnEndpointConfig.AsyncInferenceNotificationConfigProperty(
                success_topic=target.success_topic.topic_arn,
                error_topic=target.error_topic.topic_arn,
            ),
        ),
        client_config=sagemaker.CfnEndpointConfig.AsyncInferenceClientConfigProperty(
            max_concurrent_invocations_per_instance=ASYNC_MAX_CONCURRENT_INVOCATIONS_PER_INSTANCE
        ),
    )
