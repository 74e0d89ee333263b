"""WebStack: the web page (CloudFront + private bucket), its sign-in (Cognito) and its API, over InfraStack.

Deployed after InfraStack and destroyable alone (`npx cdk destroy WebStack`): it only reads InfraStack's
exports (bucket and table names/ARNs) and owns the input bucket's CORS rules, which it removes on delete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aws_cdk import CfnOutput, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from constructs import Construct, IConstruct

from infra.components.bucket_cors import BucketCors
from infra.components.web_api import PipelineResources, WebApi
from infra.components.web_auth import WebAuth
from infra.components.web_site import WebLogs, WebSite
from infra.config import PipelineConfig
from infra.nag import acknowledge, render_intrinsic
from infra.pipeline import BucketRole
from infra.web_config import AUTH_SCOPES, WebConfig, web_api_environment


class WebStack(Stack):
    """The page, the user pool and the HTTP API, for people the deployer invites."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: PipelineConfig,
        web: WebConfig,
        pipeline: PipelineResources,
        site_dir: Path,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            scope, construct_id, description="speech-to-image: web page, sign-in and API over InfraStack", **kwargs
        )
        self.pipeline = pipeline
        removal = RemovalPolicy.DESTROY if config.destroy_on_removal else RemovalPolicy.RETAIN
        self.logs = WebLogs(self, "Logs")
        self.site = WebSite(self, "Site", site_dir=site_dir, logs=self.logs.bucket, removal=removal)
        self.auth = WebAuth(
            self, "Auth", web=web, site_url=self.site.url, site_origin=self.site.origin, removal=removal
        )
        buckets = {BucketRole.INPUT: pipeline.input_bucket_name, BucketRole.OUTPUT: pipeline.output_bucket_name}
        self.api = WebApi(
            self,
            "Api",
            web=web,
            pipeline=pipeline,
            environment=web_api_environment(config, web, buckets, pipeline.ledger_table_name),
            user_pool=self.auth.user_pool,
            client=self.auth.client,
            allowed_origins=[self.site.origin],
            log_retention_days=config.log_retention_days,
            removal=removal,
        )
        # The browser posts the recording straight to the input bucket (a presigned POST) from the page's origin.
        self.upload_cors = BucketCors(
            self,
            "InputBucketCors",
            bucket_name=pipeline.input_bucket_name,
            bucket_arn=pipeline.input_bucket_arn,
            origins=[self.site.origin],
            methods=["POST"],
        )
        self.site_config = {
            "apiUrl": self.api.url,
            "region": self.region,
            "auth": {
                "domain": self.auth.domain_url,
                "clientId": self.auth.client.user_pool_client_id,
                "redirectUri": self.auth.redirect_uri,
                "scopes": list(AUTH_SCOPES),
            },
            "maxRecordingSeconds": web.max_recording_seconds,
            "maxUploadBytes": web.max_upload_bytes,
        }
        self.deployment = self.site.deploy(self.site_config)
        self._acknowledge_cdk_internals()
        outputs = {
            "SiteUrl": (self.site.url, "Open this page and sign in"),
            "ApiUrl": (self.api.url, "The web API (docs/API.md); every route needs a token from the user pool"),
            "UserPoolId": (self.auth.user_pool.user_pool_id, "Cognito user pool (make add-user EMAIL=...)"),
            "UserPoolClientId": (self.auth.client.user_pool_client_id, "The page's app client (no secret, PKCE)"),
            "AuthDomain": (self.auth.domain_url, "Hosted sign-in"),
            "SiteBucketName": (self.site.bucket.bucket_name, "The page's files (deployed from web/)"),
            "LogBucketName": (self.logs.bucket.bucket_name, "Site access logs and CloudFront logs (kept on destroy)"),
        }
        for output_id, (value, description) in outputs.items():
            CfnOutput(self, output_id, value=value, description=description)

    def _acknowledge_cdk_internals(self) -> None:
        """The CDK's own deploy-time functions: the page upload, the CORS call, the bucket emptier."""
        for child in self.node.children:
            name = child.node.id
            if name.startswith("Custom::CDKBucketDeployment"):
                acknowledge(
                    child,
                    "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                    "AWSLambdaBasicExecutionRole]",
                    "The CDK's BucketDeployment handler runs only during deployments to copy the page into the "
                    "site bucket; its role is created by the CDK with the basic logging policy.",
                )
                acknowledge(
                    child,
                    "AwsSolutions-L1",
                    "The CDK's BucketDeployment handler: the CDK release pins its runtime (it bundles the AWS CLI "
                    "layer for it); it runs only during deployments.",
                )
                self._acknowledge_deployment_grants(child)
            if name.startswith("AWS679f53fac002430cb0da5b7982bd2287"):  # AwsCustomResource's singleton
                acknowledge(
                    child,
                    "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                    "AWSLambdaBasicExecutionRole]",
                    "The CDK's AwsCustomResource handler that sets the input bucket's CORS rules during deployments; "
                    "its only other permission is s3:PutBucketCORS on that one bucket.",
                )

    def _acknowledge_deployment_grants(self, handler: IConstruct) -> None:
        """Each wildcard the CDK grants its BucketDeployment handler, acknowledged by its exact name."""
        policy = handler.node.find_child("ServiceRole").node.find_child("DefaultPolicy")
        assert isinstance(policy, iam.Policy)
        findings: set[str] = set()
        for statement in self.resolve(policy.document)["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            findings |= {f"Action::{action}" for action in actions if "*" in action}
            findings |= {f"Resource::{name}" for name in map(render_intrinsic, resources) if "*" in name}
        for finding in sorted(findings):
            acknowledge(
                handler,
                f"AwsSolutions-IAM5[{finding}]",
                "Written by the CDK for its BucketDeployment handler, which runs only during deployments: it reads "
                "the page's asset from the CDK asset bucket, replaces the site bucket's objects (read, write, "
                "delete, list).",
            )
