"""The upload ledger: one DynamoDB item per upload key, the single record of which upload is current."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

from infra.components.stage_function import StageFunction
from infra.config import PipelineConfig
from infra.pipeline import LEDGER_PARTITION_KEY, LEDGER_PENDING, LEDGER_PENDING_INDEX, LEDGER_UPDATED_AT


class UploadLedger(Construct):
    """The ledger table and its sparse index of uploads still in flight (`lambdas/pipeline_common` owns the protocol).

    The handlers claim and advance an upload's item with conditional writes, so every race between
    re-uploads, retries and replays ends with one result per upload; the sweeper queries the index.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: PipelineConfig) -> None:
        super().__init__(scope, construct_id)
        self.table = dynamodb.Table(
            self,
            "Table",
            partition_key=dynamodb.Attribute(name=LEDGER_PARTITION_KEY, type=dynamodb.AttributeType.STRING),
            # Uploads arrive in bursts and then nothing for days: pay per request, never for idle capacity.
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            # The ledger decides which upload gets a result: a bad deploy or a stray write must be recoverable.
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            # An AWS-managed key (aws/dynamodb): every use shows in CloudTrail, and no key policy to keep in
            # step with the pipeline roles. Only DynamoDB itself uses the key (no service writes into the
            # table on our behalf), so the limits that rule out AWS-managed keys for SQS/SNS do not apply.
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            removal_policy=RemovalPolicy.DESTROY if config.destroy_on_removal else RemovalPolicy.RETAIN,
        )
        # Sparse: only items that carry LEDGER_PENDING (uploads still in flight) appear, oldest first, so the
        # sweeper reads just the uploads it must watch instead of scanning every upload ever made.
        self.table.add_global_secondary_index(
            index_name=LEDGER_PENDING_INDEX,
            partition_key=dynamodb.Attribute(name=LEDGER_PENDING, type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name=LEDGER_UPDATED_AT, type=dynamodb.AttributeType.STRING),
            # The sweeper writes an error record from the item alone, without a second read per upload.
            projection_type=dynamodb.ProjectionType.ALL,
        )

    @property
    def table_name(self) -> str:
        """The generated table name (a token), for the handlers' environment."""
        return self.table.table_name

    @property
    def pending_index_arn(self) -> str:
        """The ARN of the pending-uploads index (one index, not a pattern)."""
        return f"{self.table.table_arn}/index/{LEDGER_PENDING_INDEX}"

    def allow_claims(self, stage: StageFunction) -> None:
        """Let a stage read an upload's item and advance it with a conditional write."""
        stage.allow("dynamodb:GetItem", self.table.table_arn)
        stage.allow("dynamodb:UpdateItem", self.table.table_arn)

    def allow_pending_query(self, stage: StageFunction) -> None:
        """Let a stage list the uploads still in flight, oldest first (the sweeper)."""
        stage.allow("dynamodb:Query", self.pending_index_arn)
