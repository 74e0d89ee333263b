"""Embedded AWS for local mode: moto's S3, SQS and Transcribe in this process, wired like InfraStack.

The buckets are the roles of `infra.pipeline.BucketRole` and the notifications are built from
`infra.pipeline.routes(config)`, the same definitions the CDK stack uses. S3 -> Lambda notifications
need Docker in moto, so each route notifies an SQS queue instead and `local.dispatcher` invokes the
route's handler from there with the S3 event that was delivered.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import boto3
from botocore.config import Config

from infra.config import PipelineConfig
from infra.pipeline import BucketRole, Handler, Route, routes

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
# Long enough that a message is never redelivered while its handler still runs (Lambda's max is 900 s).
QUEUE_VISIBILITY_TIMEOUT_S = 960

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
    """The SQS queue that stands in for the S3 -> Lambda notification of one handler."""
    return f"s2i-local-{handler.value.replace('_', '-')}-events"


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
class QueueBinding:
    """The queue that receives one route's S3 events."""

    route: Route
    url: str
    arn: str


class EmbeddedAws:
    """moto's server on a free loopback port, with the pipeline's buckets, queues and notifications."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = with_local_environment(config)
        self.bucket_names: dict[BucketRole, str] = {role: bucket_name(role) for role in BucketRole}
        self.queues: list[QueueBinding] = []
        self.endpoint_url = ""
        self._server: Any = None
        self._env: Any = None

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

        for service in ("s3", "sqs", "transcribe"):
            backends = get_backend(service)  # type: ignore[call-overload]
            if self.account in backends:
                backends[self.account].reset()

    def _create_resources(self) -> None:
        s3 = self.client("s3")
        sqs = self.client("sqs")
        for name in self.bucket_names.values():
            if self.region == "us-east-1":
                s3.create_bucket(Bucket=name)
            else:
                s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": self.region})
        by_bucket: dict[BucketRole, list[dict[str, Any]]] = {}
        for route in routes(self.config):
            url = sqs.create_queue(
                QueueName=queue_name(route.handler),
                Attributes={"VisibilityTimeout": str(QUEUE_VISIBILITY_TIMEOUT_S)},
            )["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            self.queues.append(QueueBinding(route=route, url=url, arn=arn))
            by_bucket.setdefault(route.bucket, []).extend(notification_configurations(route, arn))
        for role, configurations in by_bucket.items():
            s3.put_bucket_notification_configuration(
                Bucket=self.bucket_names[role],
                NotificationConfiguration={"QueueConfigurations": configurations},
            )

    def handler_for_queue_arn(self, arn: str) -> Handler:
        """The handler whose route delivers to the queue with this ARN."""
        for binding in self.queues:
            if binding.arn == arn:
                return binding.route.handler
        raise KeyError(arn)
