"""CORS rules on a bucket another stack owns, set at deploy time by a custom resource.

Why not a `cors` property on the bucket: the input bucket lives in InfraStack, but the allowed origin is
WebStack's CloudFront domain, known only once WebStack deploys; InfraStack naming it would make the two
stacks reference each other. So WebStack puts the rules on the bucket itself (PutBucketCors on create and
update, DeleteBucketCors on delete), with a role that may do exactly that on exactly that bucket. The
bucket has no other CORS rules (InfraStack sets none), so replacing the whole configuration loses nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration
from aws_cdk import aws_iam as iam
from aws_cdk import custom_resources as cr
from constructs import Construct

# Browsers may cache a preflight answer this long (Chromium caps it at 2 hours).
PREFLIGHT_MAX_AGE = Duration.hours(1)


class BucketCors(Construct):
    """Allow `methods` from exactly `origins` on one bucket (given by name and ARN, e.g. from another stack)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        bucket_name: str,
        bucket_arn: str,
        origins: Sequence[str],
        methods: Sequence[str],
    ) -> None:
        super().__init__(scope, construct_id)
        self.rules = [
            {
                "AllowedOrigins": list(origins),
                "AllowedMethods": list(methods),
                # A presigned POST is a multipart form; an upload with a progress bar is preflighted, and the
                # browser may ask for any header it adds: the origin, not the header, is what is restricted.
                "AllowedHeaders": ["*"],
                "ExposeHeaders": ["ETag"],
                "MaxAgeSeconds": int(PREFLIGHT_MAX_AGE.to_seconds()),
            }
        ]
        put = cr.AwsSdkCall(
            service="S3",
            action="putBucketCors",
            parameters={"Bucket": bucket_name, "CORSConfiguration": {"CORSRules": self.rules}},
            physical_resource_id=cr.PhysicalResourceId.of(f"{bucket_name}-cors"),
        )
        self.resource = cr.AwsCustomResource(
            self,
            "Resource",
            on_create=put,
            on_update=put,
            on_delete=cr.AwsSdkCall(service="S3", action="deleteBucketCors", parameters={"Bucket": bucket_name}),
            # PutBucketCors and DeleteBucketCors are both authorised by s3:PutBucketCORS (S3 API reference).
            policy=cr.AwsCustomResourcePolicy.from_statements(
                [iam.PolicyStatement(actions=["s3:PutBucketCORS"], resources=[bucket_arn])]
            ),
            install_latest_aws_sdk=False,
        )
