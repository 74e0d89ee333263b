"""The web page on AWS: a private bucket behind CloudFront (origin access control), with its config.json."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_cloudfront as cloudfront
from aws_cdk import aws_cloudfront_origins as origins
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_deployment as s3_deployment
from constructs import Construct

from infra.nag import acknowledge

# Access logs (the site bucket's and CloudFront's) are for audits of recent activity, like the pipeline's.
LOG_RETENTION = Duration.days(90)
# Security headers on every response. The CSP holds only what cannot break the page (no framing, no plugins,
# no <base> tricks); a full script/connect policy would have to name the API, S3 and Cognito origins.
FRAME_ANCESTORS_CSP = "frame-ancestors 'none'; object-src 'none'; base-uri 'self'"
HSTS_MAX_AGE = Duration.days(365)


class WebLogs(Construct):
    """The bucket the site bucket's S3 access logs and CloudFront's standard logs go to.

    Its own: a log bucket in InfraStack would need a policy naming this stack's buckets, a reference
    cycle between the stacks. CloudFront's standard logging writes with ACLs, so object ownership is
    "object writer" here (the pipeline's log bucket enforces bucket-owner ownership). Retained on
    destroy for the same reason as the pipeline's: S3 delivers logs late (aws/aws-cdk#21776).
    """

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.OBJECT_WRITER,
            lifecycle_rules=[s3.LifecycleRule(expiration=LOG_RETENTION)],
            removal_policy=RemovalPolicy.RETAIN,
        )
        acknowledge(
            self.bucket,
            "AwsSolutions-S1",
            "This bucket is itself the destination of the web app's S3 server access logs and CloudFront logs; "
            "logging its own access would log into itself (S3 documents that as an endless loop of log objects).",
        )


class WebSite(Construct):
    """The page's files in a private bucket, served by a CloudFront distribution over HTTPS only."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        site_dir: Path,
        logs: s3.IBucket,
        removal: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        if not (site_dir / "index.html").is_file():
            raise FileNotFoundError(f"{site_dir}/index.html not found: WebStack deploys the page in {site_dir}")
        self.site_dir = site_dir
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=logs,
            server_access_logs_prefix="site/",
            removal_policy=removal,
            # The page's files are rebuilt from the repository on every deploy: nothing to keep.
            auto_delete_objects=removal == RemovalPolicy.DESTROY,
        )
        headers = cloudfront.ResponseHeadersPolicy(
            self,
            "SecurityHeaders",
            comment="speech-to-image web page: security headers",
            security_headers_behavior=cloudfront.ResponseSecurityHeadersBehavior(
                content_security_policy=cloudfront.ResponseHeadersContentSecurityPolicy(
                    content_security_policy=FRAME_ANCESTORS_CSP, override=True
                ),
                content_type_options=cloudfront.ResponseHeadersContentTypeOptions(override=True),
                frame_options=cloudfront.ResponseHeadersFrameOptions(
                    frame_option=cloudfront.HeadersFrameOption.DENY, override=True
                ),
                referrer_policy=cloudfront.ResponseHeadersReferrerPolicy(
                    referrer_policy=cloudfront.HeadersReferrerPolicy.STRICT_ORIGIN_WHEN_CROSS_ORIGIN, override=True
                ),
                strict_transport_security=cloudfront.ResponseHeadersStrictTransportSecurity(
                    access_control_max_age=HSTS_MAX_AGE, include_subdomains=True, override=True
                ),
            ),
        )
        self.distribution = cloudfront.Distribution(
            self,
            "Distribution",
            comment="speech-to-image web page",
            default_behavior=cloudfront.BehaviorOptions(
                # Origin access control: the bucket stays private and answers only this distribution.
                origin=origins.S3BucketOrigin.with_origin_access_control(self.bucket),
                viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
                allowed_methods=cloudfront.AllowedMethods.ALLOW_GET_HEAD,
                cache_policy=cloudfront.CachePolicy.CACHING_OPTIMIZED,
                response_headers_policy=headers,
            ),
            default_root_object="index.html",
            # North America and Europe edges only: the cheapest class; other viewers are served from them.
            price_class=cloudfront.PriceClass.PRICE_CLASS_100,
            enable_logging=True,
            log_bucket=logs,
            log_file_prefix="cloudfront/",
        )
        acknowledge(
            self.distribution,
            "AwsSolutions-CFR1",
            "No geo restriction: the page is for the deployer and the people they add to the user pool, wherever "
            "they travel; the API behind it refuses anyone without a token from the pool.",
        )
        acknowledge(
            self.distribution,
            "AwsSolutions-CFR2",
            "No AWS WAF web ACL (from about $5 a month plus $1 per rule): the distribution serves a few static "
            "files, every API route needs a Cognito token, and the API stage is throttled.",
        )
        acknowledge(
            self.distribution,
            "AwsSolutions-CFR4",
            "The distribution uses its *.cloudfront.net name and CloudFront's default certificate, for which "
            "CloudFront itself fixes the viewer TLS policy (a minimum protocol version is ignored); only a custom "
            "domain with an ACM certificate, out of scope here, can raise it to TLSv1.2_2021.",
        )

    @property
    def url(self) -> str:
        """The page's address: https://<distribution domain>/ (a token until deploy)."""
        return f"https://{self.distribution.distribution_domain_name}/"

    @property
    def origin(self) -> str:
        """The page's origin for CORS rules: https://<distribution domain>, no path."""
        return f"https://{self.distribution.distribution_domain_name}"

    def deploy(self, config_json: Mapping[str, Any]) -> s3_deployment.BucketDeployment:
        """Upload the page's files and its generated config.json."""
        deployment = s3_deployment.BucketDeployment(
            self,
            "Deployment",
            sources=[
                # A config.json for local use in the folder must not shadow the generated one.
                s3_deployment.Source.asset(str(self.site_dir), exclude=["config.json"]),
                # Deploy-time values (API URL, user pool client): the page reads them at start.
                s3_deployment.Source.json_data("config.json", dict(config_json)),
            ],
            destination_bucket=self.bucket,
            # No build step, so no content hashes in file names: browsers revalidate each file (ETag) instead
            # of keeping a stale page or config.json after a deploy, and CloudFront keeps a no-cache object for
            # the cache policy's minimum TTL (1 s). So no invalidation: it would give the deploy-time handler
            # cloudfront:CreateInvalidation on every distribution in the account (that action takes no
            # resource from the CDK), for nothing.
            cache_control=[s3_deployment.CacheControl.no_cache()],
            memory_limit=256,
        )
        return deployment
