"""The web page's HTTP API: a JWT authorizer on every route, a throttled stage, and a least-privilege Lambda."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jsii
from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_apigatewayv2_authorizers as authorizers
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_cognito as cognito
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.components.stage_function import ARCHITECTURE, LAMBDAS_DIR, RUNTIME, powertools_layer, retention_days
from infra.nag import acknowledge, render_intrinsic
from infra.pipeline import ERROR_PREFIX, IMAGE_PREFIX, Handler
from infra.web_config import WEB_UPLOAD_PREFIX, WebConfig

# The handler in lambdas/web_api/handler.py, relative to the lambdas/ asset root.
WEB_API_ENTRY_POINT = "web_api.handler.handler"
# The routes of docs/API.md; every one needs a token from the user pool.
ROUTES: tuple[tuple[str, apigwv2.HttpMethod], ...] = (
    ("/uploads", apigwv2.HttpMethod.POST),
    ("/uploads", apigwv2.HttpMethod.GET),
    ("/uploads/{id}", apigwv2.HttpMethod.GET),
)
# Presigning and a few S3/DynamoDB reads take well under a second; API Gateway gives up after 30 s anyway.
TIMEOUT = Duration.seconds(10)
MEMORY_MB = 256
# One line per request in the access log: who (the token's sub), what, and how it went.
ACCESS_LOG_FORMAT = {
    "requestId": "$context.requestId",
    "time": "$context.requestTime",
    "ip": "$context.identity.sourceIp",
    "sub": "$context.authorizer.claims.sub",
    "method": "$context.httpMethod",
    "path": "$context.path",
    "status": "$context.status",
    "latencyMs": "$context.responseLatency",
    "authorizerError": "$context.authorizer.error",
    "integrationError": "$context.integrationErrorMessage",
}


@dataclass(frozen=True)
class PipelineResources:
    """What the API reads and presigns into, as ARNs and names (InfraStack's exports)."""

    input_bucket_name: str
    input_bucket_arn: str
    output_bucket_name: str
    output_bucket_arn: str
    ledger_table_name: str
    ledger_table_arn: str


class WebApi(Construct):
    """HTTP API -> one Lambda (lambdas/web_api), reachable only with a Cognito token, only from the site's origin.

    IAM can only narrow the function to the web prefix (`web/*`): which person's `web/<sub>/` a request may
    touch is decided in the handler from the token's `sub`, because one role serves every person.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        web: WebConfig,
        pipeline: PipelineResources,
        environment: Mapping[str, str],
        user_pool: cognito.IUserPool,
        client: cognito.IUserPoolClient,
        allowed_origins: Sequence[str],
        log_retention_days: int,
        removal: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        self.log_group = logs.LogGroup(
            self, "FunctionLogs", retention=retention_days(log_retention_days), removal_policy=removal
        )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="web_api: presign uploads under web/, read their results and ledger items",
        )
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=RUNTIME,
            # The pipeline handlers stay out; pipeline_common (keys, ledger) comes along.
            code=lambda_.Code.from_asset(
                str(LAMBDAS_DIR), exclude=[*(handler.value for handler in Handler), "**/__pycache__", "**/*.pyc"]
            ),
            handler=WEB_API_ENTRY_POINT,
            architecture=ARCHITECTURE,
            layers=[powertools_layer(self)],
            description="speech-to-image web API: upload forms, stages and results for the signed-in person",
            environment=dict(environment),
            timeout=TIMEOUT,
            memory_size=MEMORY_MB,
            role=self.role,
            log_group=self.log_group,
            logging_format=lambda_.LoggingFormat.JSON,
        )
        self.log_group.grant_write(self.role)
        self._grant(pipeline)

        self.api = apigwv2.HttpApi(
            self,
            "Api",
            description="speech-to-image web API (docs/API.md)",
            create_default_stage=False,
            cors_preflight=apigwv2.CorsPreflightOptions(
                allow_origins=list(allowed_origins),
                allow_methods=[apigwv2.CorsHttpMethod.GET, apigwv2.CorsHttpMethod.POST],
                allow_headers=["authorization", "content-type"],
                max_age=Duration.hours(1),
            ),
            # Every route: a JWT from this pool, issued to the page's client (audience = its client id).
            default_authorizer=authorizers.HttpUserPoolAuthorizer(
                "UserPoolAuthorizer", user_pool, user_pool_clients=[client]
            ),
        )
        integration = integrations.HttpLambdaIntegration("Handler", self.function)
        for path, method in ROUTES:
            self.api.add_routes(path=path, methods=[method], integration=integration)
        self.access_logs = logs.LogGroup(
            self, "AccessLogs", retention=retention_days(log_retention_days), removal_policy=removal
        )
        self.stage = apigwv2.HttpStage(
            self,
            "Stage",
            http_api=self.api,
            stage_name="$default",
            auto_deploy=True,
            # HTTP APIs have no API keys or usage plans: the stage limit caps what the whole API accepts.
            throttle=apigwv2.ThrottleSettings(rate_limit=web.throttle_rate_limit, burst_limit=web.throttle_burst_limit),
            access_log_settings=_AccessLogSettings(self.access_logs),
        )

    @property
    def url(self) -> str:
        """The base URL of the $default stage, no trailing slash: https://<id>.execute-api.<region>.amazonaws.com."""
        return self.api.api_endpoint

    def _grant(self, pipeline: PipelineResources) -> None:
        """Presign uploads into web/ only; read only web results and web ledger items."""
        uploads = f"{pipeline.input_bucket_arn}/{WEB_UPLOAD_PREFIX}*"
        results = [
            f"{pipeline.output_bucket_arn}/{IMAGE_PREFIX}{WEB_UPLOAD_PREFIX}*",
            f"{pipeline.output_bucket_arn}/{ERROR_PREFIX}{WEB_UPLOAD_PREFIX}*",
        ]
        statements = [
            # A presigned POST is signed with this role's credentials: S3 checks the role may put the object.
            iam.PolicyStatement(sid="PresignUploads", actions=["s3:PutObject"], resources=[uploads]),
            # Listing a person's uploads (`web/<sub>/`): the prefix condition keeps every other key unlisted.
            iam.PolicyStatement(
                sid="ListUploads",
                actions=["s3:ListBucket"],
                resources=[pipeline.input_bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{WEB_UPLOAD_PREFIX}*"]}},
            ),
            # Presigned result links (image, metadata, page, error record) are GETs signed by this role.
            iam.PolicyStatement(sid="ReadResults", actions=["s3:GetObject"], resources=results),
            # Ledger items are keyed by upload key: only those of web uploads may be read.
            iam.PolicyStatement(
                sid="ReadLedger",
                actions=["dynamodb:GetItem", "dynamodb:BatchGetItem"],
                resources=[pipeline.ledger_table_arn],
                conditions={"ForAllValues:StringLike": {"dynamodb:LeadingKeys": [f"{WEB_UPLOAD_PREFIX}*"]}},
            ),
        ]
        for statement in statements:
            self.role.add_to_principal_policy(statement)
        stack = Stack.of(self)
        for pattern, reason in (
            (uploads, "Uploads are new objects named web/<sub>/<upload id>.<ext> by the handler, so the key is "),
            (results[0], "A result's keys derive from its upload's key (images/web/<sub>/...), so the key is "),
            (results[1], "An error record's key derives from its upload's key (errors/web/<sub>/...), so it is "),
        ):
            acknowledge(
                self.role,
                f"AwsSolutions-IAM5[Resource::{render_intrinsic(stack.resolve(pattern))}]",
                reason + "known only per request; the pattern is the web prefix, and the handler allows a person "
                "only keys under their own token's sub.",
            )


@jsii.implements(apigwv2.IAccessLogSettings)
class _AccessLogSettings:
    """JSON access log lines into a log group (the shape HttpStage's access_log_settings takes)."""

    def __init__(self, log_group: logs.ILogGroup) -> None:
        self.log_group = log_group

    @property
    def destination(self) -> apigwv2.IAccessLogDestination:
        return apigwv2.LogGroupLogDestination(self.log_group)

    @property
    def format(self) -> apigw.AccessLogFormat:
        return apigw.AccessLogFormat.custom(json.dumps(ACCESS_LOG_FORMAT))
