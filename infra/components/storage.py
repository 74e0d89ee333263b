"""The pipeline's buckets: input audio, transcripts, output images, model artifacts, access logs."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.config import PipelineConfig
from infra.pipeline import (
    ASYNC_FAILURE_PREFIX,
    ASYNC_OBJECT_RETENTION_DAYS,
    ASYNC_OUTPUT_PREFIX,
    ASYNC_REQUEST_PREFIX,
    VERSIONED_BUCKETS,
    BucketRole,
)

# Access logs are for audits of recent activity; three months bounds their storage cost.
ACCESS_LOG_RETENTION = Duration.days(90)
# The one folder that holds every asynchronous inference object (requests, outputs, failures).
ASYNC_PREFIX = ASYNC_REQUEST_PREFIX.split("/", 1)[0] + "/"
assert all(prefix.startswith(ASYNC_PREFIX) for prefix in (ASYNC_OUTPUT_PREFIX, ASYNC_FAILURE_PREFIX))
# A versioned bucket keeps replaced objects only as long as a late event might still read them.
NONCURRENT_VERSION_RETENTION = Duration.days(1)


class PipelineBuckets(Construct):
    """Private, encrypted, SSL-only buckets, each logging its access to one log bucket.

    Buckets in `VERSIONED_BUCKETS` keep every version, so a handler can read exactly the object
    its event names; older versions expire a day after they are replaced.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: PipelineConfig) -> None:
        super().__init__(scope, construct_id)
        removal = RemovalPolicy.DESTROY if config.destroy_on_removal else RemovalPolicy.RETAIN
        common = {
            "block_public_access": s3.BlockPublicAccess.BLOCK_ALL,
            "encryption": s3.BucketEncryption.S3_MANAGED,
            "enforce_ssl": True,
            "object_ownership": s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            "removal_policy": removal,
            # `cdk destroy` can only delete a bucket that is empty.
            "auto_delete_objects": config.destroy_on_removal,
        }
        # Always retained: S3 delivers access logs late (including those of the auto-delete calls on
        # the other buckets), so emptying this bucket during `cdk destroy` races its own refill
        # (aws/aws-cdk#21776). Its objects expire on their own; the README shows how to remove it.
        self.access_logs = s3.Bucket(
            self,
            "AccessLogs",
            lifecycle_rules=[s3.LifecycleRule(expiration=ACCESS_LOG_RETENTION)],
            **{**common, "removal_policy": RemovalPolicy.RETAIN, "auto_delete_objects": False},
        )
        self._buckets = {
            role: s3.Bucket(
                self,
                role.value,
                server_access_logs_bucket=self.access_logs,
                server_access_logs_prefix=f"{role.value.lower()}/",
                **common,
                **(_versioning() if role in VERSIONED_BUCKETS else {}),
            )
            for role in BucketRole
        }
        if config.is_async:
            # async_result removes each request and result once recorded; what it never saw (an expired
            # request, a result whose notification was lost) must not stay forever. The noncurrent-version
            # rule then removes the expired objects' last versions a day later.
            self._buckets[BucketRole.TRANSCRIPTS].add_lifecycle_rule(
                id="ExpireAsyncInferenceObjects",
                prefix=ASYNC_PREFIX,
                expiration=Duration.days(ASYNC_OBJECT_RETENTION_DAYS),
            )

    def __getitem__(self, role: BucketRole) -> s3.Bucket:
        """The bucket that plays `role`."""
        return self._buckets[role]

    @property
    def names(self) -> dict[BucketRole, str]:
        """Bucket names (CloudFormation tokens) by role, for handler environments."""
        return {role: bucket.bucket_name for role, bucket in self._buckets.items()}


def _versioning() -> dict[str, object]:
    """Bucket props for a versioned bucket whose old versions (and leftover delete markers) do not pile up."""
    return {
        "versioned": True,
        "lifecycle_rules": [
            s3.LifecycleRule(
                id="ExpireReplacedVersions",
                noncurrent_version_expiration=NONCURRENT_VERSION_RETENTION,
                expired_object_delete_marker=True,
            )
        ],
    }
