"""Embedded AWS for local mode: moto's S3, SQS, EventBridge, Transcribe and DynamoDB in this process, wired like
InfraStack.

The buckets are the roles of `infra.pipeline.BucketRole`, the notifications are built from
`infra.pipeline.routes(config)` and the EventBridge rules from `infra.pipeline.event_routes(config)`,
the same definitions the CDK stack uses. Each S3 route notifies its SQS queue, as on AWS, with a redrive
policy to the handler's dead-letter queue after `route.queue.max_receive_count` receives; `local.dispatcher`
plays the event source mapping. EventBridge -> Lambda needs Docker in moto, so each event route targets a
queue instead and the dispatcher invokes the handler asynchronously from there; after the retries it puts
the event in the handler's dead-letter queue in the record shape of Lambda's on-failure destination. The
upload ledger is a moto DynamoDB table with InfraStack's schema (`infra.pipeline` LEDGER_* constants).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import boto3
from botocore.config import Config

from infra.config import PipelineConfig
from infra.pipeline import (
    ASYNC_RESULT_QUEUE,
    VERSIONED_BUCKETS,
    BucketRole,
    EventRoute,
    Handler,
    QueueSettings,
    Route,
    event_routes,
    ledger_table_schema,
    routes,
)
from local.faults import Faults
from local.moto_patches import patch_dynamodb_atomic, patch_sqs_atomic

# Obviously fake credentials: local mode must never be able to reach a real account.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIALOCALMODE0000000",
    "AWS_SECRET_ACCESS_KEY": "local-mode-not-a-secret",
    "AWS_SESSION_TOKEN": "local-mode",
}
# What an environment-agnostic configuration resolves to locally (on AWS: the deploying credentials').
LOCAL_ACCOUNT = "000000000000"
LOCAL_REGION = "us-east-1"
# S3 sends this event type for every route (what the CDK's addEventNotification(OBJECT_CREATED) uses).
OBJECT_CREATED = "s3:ObjectCreated:*"
# Long enough that a message is never redelivered while its handler still runs (Lambda's max is 900 s);
# a message whose processing failed is made visible again sooner by the dispatcher (local.dispatcher).
QUEUE_VISIBILITY_TIMEOUT_S = 960
# The ledger's local physical name (on AWS the table's name is generated and reaches the handlers the same way).
LEDGER_TABLE = "s2i-local-ledger"

_active_lock = threading.Lock()
_active: EmbeddedAws | None = None


class LocalModeError(RuntimeError):
    """Local mode cannot start or run; the message says what to do."""


def with_local_environment(config: PipelineConfig) -> PipelineConfig:
    """The configuration with an account and region: the context's, else local mode's fixed ones."""
    return replace(config, account=config.account or LOCAL_ACCOUNT, region=config.region or LOCAL_REGION)


def bucket_name(role: BucketRole) -> str:
    """The local physical name for a bucket role, e.g. `s2i-local-input`."""
    return f"s2i-local-{role.value.lower()}"


def queue_name(handler: Handler) -> str:
    """The SQS queue that stands in for the S3 / EventBridge -> Lambda delivery to one handler."""
    return f"s2i-local-{handler.value.replace('_', '-')}-events"


def dead_letter_queue_name(handler: Handler) -> str:
    """The SQS queue that stands in for one handler's dead-letter queue (its on-failure destination)."""
    return f"s2i-local-{handler.value.replace('_', '-')}-dlq"


def notification_configurations(route: Route, queue_arn: str) -> list[dict[str, Any]]:
    """S3 QueueConfigurations for one route: one per suffix, as the CDK does (one suffix per filter)."""
    configurations = []
    for index, suffix in enumerate(route.suffixes or (None,)):
        rules = []
        # S3 rejects an empty prefix rule; the CDK leaves it out too.
        if route.prefix:
            rules.append({"Name": "prefix", "Value": route.prefix})
        if suffix:
            rules.append({"Name": "suffix", "Value": suffix})
        configuration: dict[str, Any] = {
            "Id": f"{route.handler.value}-{index}",
            "QueueArn": queue_arn,
            "Events": [OBJECT_CREATED],
        }
        if rules:
            configuration["Filter"] = {"Key": {"FilterRules": rules}}
        configurations.append(configuration)
    return configurations


@contextmanager
def patched_environ(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for None, remove) environment variables and restore the previous values on exit."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass(frozen=True)
class NotificationRoute:
    """SageMaker's async result topics -> their raw-delivery queue -> a handler (InfraStack's AsyncResultRecorder)."""

    handler: Handler
    queue: QueueSettings


@dataclass(frozen=True)
class QueueBinding:
    """The queue that receives one route's events (S3 notifications, EventBridge events, SageMaker's results)."""

    route: Route | EventRoute | NotificationRoute
    url: str
    arn: str

    @property
    def handler(self) -> Handler:
        """The handler the route delivers to."""
        return self.route.handler


class EmbeddedAws:
    """moto's server on a free loopback port, with the pipeline's buckets, queues, rules and notifications."""

    def __init__(self, config: PipelineConfig, faults: Faults | None = None) -> None:
        self.config = with_local_environment(config)
        self.faults = faults or Faults()
        self.bucket_names: dict[BucketRole, str] = {role: bucket_name(role) for role in BucketRole}
        self.queues: list[QueueBinding] = []
        self.dead_letter_queues: dict[Handler, str] = {}
        self.ledger_table = LEDGER_TABLE
        self.endpoint_url = ""
        self._server: Any = None
        self._env: Any = None
        self._unpatch: list[Any] = []

    @property
    def account(self) -> str:
        """The emulated account id (the configuration's, so ARNs match what the stack would create)."""
        return self.config.account or LOCAL_ACCOUNT

    @property
    def region(self) -> str:
        """The emulated region (the configuration's)."""
        return self.config.region or LOCAL_REGION

    def process_environment(self) -> dict[str, str | None]:
        """What this process's environment needs while moto serves: fake credentials, region, account."""
        return {
            **FAKE_CREDENTIALS,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            # moto's server reads this on every request: all resources land in the configured account.
            "MOTO_ACCOUNT_ID": self.account,
            # A real profile or config file must never leak into local mode.
            "AWS_PROFILE": None,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self) -> None:
        """Start moto, then create the buckets, queues and notifications."""
        global _active
        with _active_lock:
            if _active is not None:
                raise LocalModeError(
                    "a local runtime is already running in this process (moto's state is per process); "
                    "stop it first or share it"
                )
            _active = self
        try:
            self._env = patched_environ(self.process_environment())
            self._env.__enter__()
            # moto's werkzeug server logs every request at INFO; progress output is ours to give.
            logging.getLogger("werkzeug").setLevel(logging.ERROR)
            from moto.server import ThreadedMotoServer

            self._reset_backends()
            self._patch_s3()
            self._unpatch += patch_sqs_atomic()
            self._unpatch += patch_dynamodb_atomic()
            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            self._server.start()
            host, port = self._server.get_host_and_port()
            self.endpoint_url = f"http://{host}:{port}"
            self._create_resources()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop moto and forget its state, so a later runtime in this process starts clean."""
        global _active
        with _active_lock:
            if _active is not self:
                return  # never started, or refused because another runtime runs: its state is not ours
        try:
            if self._server is not None:
                self._server.stop()
                self._server = None
            self._reset_backends()
            while self._unpatch:
                self._unpatch.pop()()
        finally:
            if self._env is not None:
                self._env.__exit__(None, None, None)
                self._env = None
            with _active_lock:
                _active = None

    def client(self, service: str) -> Any:
        """A boto3 client for the embedded service, with fake credentials and a short retry budget."""
        return boto3.session.Session().client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=FAKE_CREDENTIALS["AWS_SESSION_TOKEN"],
            config=Config(retries={"max_attempts": 2, "mode": "standard"}, read_timeout=30),
        )

    def backend(self, service: str) -> Any:
        """moto's in-process backend of a service for the emulated account and region."""
        from moto.backends import get_backend

        region = "aws" if service == "s3" else self.region
        return get_backend(service)[self.account][region]  # type: ignore[call-overload]

    def _reset_backends(self) -> None:
        from moto.backends import get_backend

        for service in ("s3", "sqs", "transcribe", "events", "dynamodb"):
            backends = get_backend(service)  # type: ignore[call-overload]
            if self.account in backends:
                backends[self.account].reset()

    def _create_resources(self) -> None:
        s3 = self.client("s3")
        sqs = self.client("sqs")
        events = self.client("events")
        for role, name in self.bucket_names.items():
            if self.region == "us-east-1":
                s3.create_bucket(Bucket=name)
            else:
                s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": self.region})
            if role in VERSIONED_BUCKETS:
                s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        create_ledger_table(self.client("dynamodb"), self.ledger_table)

        def create_queue(name: str, attributes: dict[str, str] | None = None) -> tuple[str, str]:
            attributes = {"VisibilityTimeout": str(QUEUE_VISIBILITY_TIMEOUT_S), **(attributes or {})}
            url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
            return url, sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

        dead_letter_arns: dict[Handler, str] = {}
        for handler in Handler:
            self.dead_letter_queues[handler], dead_letter_arns[handler] = create_queue(dead_letter_queue_name(handler))
        by_bucket: dict[BucketRole, list[dict[str, Any]]] = {}
        for route in routes(self.config):
            # As InfraStack's queues: SQS itself moves a message to the dead-letter queue after the last receive.
            redrive = {
                "deadLetterTargetArn": dead_letter_arns[route.handler],
                "maxReceiveCount": route.queue.max_receive_count,
            }
            url, arn = create_queue(queue_name(route.handler), {"RedrivePolicy": json.dumps(redrive)})
            self.queues.append(QueueBinding(route=route, url=url, arn=arn))
            by_bucket.setdefault(route.bucket, []).extend(notification_configurations(route, arn))
        if self.config.is_async:
            # One queue stands in for both topics and their raw-delivery subscriptions; the local async endpoint
            # sends each notification to it as the subscription would deliver it (local.async_endpoint).
            route = NotificationRoute(Handler.ASYNC_RESULT, ASYNC_RESULT_QUEUE)
            redrive = {
                "deadLetterTargetArn": dead_letter_arns[route.handler],
                "maxReceiveCount": route.queue.max_receive_count,
            }
            url, arn = create_queue(queue_name(route.handler), {"RedrivePolicy": json.dumps(redrive)})
            self.queues.append(QueueBinding(route=route, url=url, arn=arn))
        for role, configurations in by_bucket.items():
            s3.put_bucket_notification_configuration(
                Bucket=self.bucket_names[role],
                NotificationConfiguration={"QueueConfigurations": configurations},
            )
        for event_route in event_routes(self.config):
            url, arn = create_queue(queue_name(event_route.handler))
            self.queues.append(QueueBinding(route=event_route, url=url, arn=arn))
            # The same pattern InfraStack's rule has: moto's EventBridge does the matching.
            rule = f"s2i-local-{event_route.name}"
            events.put_rule(Name=rule, EventPattern=json.dumps(event_route.pattern), State="ENABLED")
            events.put_targets(Rule=rule, Targets=[{"Id": event_route.handler.value, "Arn": arn}])

    def _patch_s3(self) -> None:
        """Complete moto's S3 events and let injected faults fail writes (undone by `stop`)."""
        from moto.s3 import notifications
        from moto.s3.exceptions import S3ClientError

        original_event = notifications._get_s3_event
        sequence = iter(range(1, 1 << 62))

        def s3_event(event_name: str, bucket: Any, key: Any, notification_id: str) -> dict[str, Any]:
            """moto's event plus what S3 also sends: versionId (versioned buckets), sequencer, identities."""
            event = original_event(event_name, bucket, key, notification_id)
            record = event["Records"][0]
            record.setdefault("userIdentity", {"principalId": "AWS:LOCALMODE"})
            record.setdefault("requestParameters", {"sourceIPAddress": "127.0.0.1"})
            record.setdefault(
                "responseElements", {"x-amz-request-id": uuid.uuid4().hex[:16].upper(), "x-amz-id-2": uuid.uuid4().hex}
            )
            record["s3"].setdefault("bucket", {}).setdefault("ownerIdentity", {"principalId": "LOCALMODE"})
            obj = record["s3"]["object"]
            version = getattr(key, "version_id", None)
            if getattr(bucket, "is_versioned", False) and version and version != "null":
                obj["versionId"] = version
            # Hex that grows with every event of this process, compared as equal-length strings, as S3's does.
            obj["sequencer"] = f"{next(sequence):016X}"
            return event

        notifications._get_s3_event = s3_event
        self._unpatch.append(lambda: setattr(notifications, "_get_s3_event", original_event))

        backend = self.backend("s3")
        faults = self.faults

        def put_object(bucket_name: str, key_name: str, *args: Any, **kwargs: Any) -> Any:
            """PutObject, unless an injected fault denies this write."""
            if faults.take("s3-put", bucket=bucket_name, key=key_name) is not None:
                raise S3ClientError("AccessDenied", "Access Denied (a fault injected by local mode)")
            return type(backend).put_object(backend, bucket_name, key_name, *args, **kwargs)

        backend.put_object = put_object
        self._unpatch.append(lambda: backend.__dict__.pop("put_object", None))

    def handler_for_queue_arn(self, arn: str) -> Handler:
        """The handler whose route delivers to the queue with this ARN."""
        for binding in self.queues:
            if binding.arn == arn:
                return binding.handler
        raise KeyError(arn)

    def queue_for(self, handler: Handler) -> QueueBinding:
        """The queue through which events reach `handler`."""
        return next(binding for binding in self.queues if binding.handler is handler)


def create_ledger_table(dynamodb: Any, table: str) -> None:
    """The upload ledger as InfraStack defines it: the key, and the sparse index of in-flight uploads by age."""
    dynamodb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST", **ledger_table_schema())
