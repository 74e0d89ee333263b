"""What every command for a deployed stack shares: the boto3 session, the stack's outputs, and its usage errors.

`make replay`, `make generate` and `make add-user` find what they work on (queues, buckets, the ledger table,
the user pool) in a CloudFormation stack's outputs, and answer missing credentials, region, profile or
stack with the same one-line message and exit status 2.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError, ProfileNotFound

EXIT_FAILED = 1
EXIT_USAGE = 2
NO_CREDENTIALS = "no AWS credentials: configure them (aws configure / AWS_PROFILE) and retry"
NO_REGION = "no AWS region: pass --region or set AWS_REGION (or a region in aws configure)"
# How to deploy each stack, for the "not found" message.
DEPLOY_HINTS = {"InfraStack": "make deploy-infra", "WebStack": "make deploy-web"}


class StackNotFoundError(LookupError):
    """The CloudFormation stack that should hold the outputs does not exist (in this region)."""


class MissingOutputError(LookupError):
    """The stack exists but lacks an output this command needs: it is not this project's stack."""


def session(region: str | None) -> Any:
    """The boto3 session the commands use (tests replace it).

    botocore reads AWS_DEFAULT_REGION but not AWS_REGION, which the CDK and this README use: honour both.
    """
    return boto3.Session(region_name=region or os.environ.get("AWS_REGION") or None)


def stack_outputs(cloudformation: Any, stack_name: str) -> dict[str, str]:
    """The stack's outputs by name; `StackNotFoundError` when there is no such stack."""
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        error = exc.response.get("Error", {})
        # CloudFormation reports a missing stack as a generic ValidationError; only the text tells.
        if error.get("Code") == "ValidationError" and "does not exist" in error.get("Message", ""):
            raise StackNotFoundError(stack_name) from exc
        raise
    if not stacks:
        raise StackNotFoundError(stack_name)
    return {output["OutputKey"]: output["OutputValue"] for output in stacks[0].get("Outputs", [])}


def require(outputs: Mapping[str, str], stack_name: str, *names: str) -> list[str]:
    """The values of the named outputs, in order; `MissingOutputError` naming the first one missing."""
    missing = [name for name in names if not outputs.get(name)]
    if missing:
        raise MissingOutputError(
            f"stack {stack_name} has no {missing[0]} output: is it this project's stack? Pass --stack NAME"
        )
    return [outputs[name] for name in names]


def run_command(
    body: Callable[[Any], int],
    *,
    make_session: Callable[[str | None], Any],
    region: str | None,
    stack_name: str,
    err: TextIO | None = None,
) -> int:
    """Run `body(session)`; the usage problems every command shares become one line on stderr and exit 2.

    Any other error AWS answers with is printed too, with exit 1.
    """
    err = err or sys.stderr
    try:
        current = make_session(region)
        region = current.region_name or region
        return body(current)
    except NoCredentialsError:
        message = NO_CREDENTIALS
    except NoRegionError:
        message = NO_REGION
    except ProfileNotFound as exc:
        message = f"{exc}: check AWS_PROFILE"
    except StackNotFoundError:
        deploy = DEPLOY_HINTS.get(stack_name, "npx cdk deploy")
        message = (
            f"stack {stack_name} not found in region {region or 'of your AWS configuration'}: deploy it first "
            f"({deploy}), or pass --stack NAME / --region REGION"
        )
    except MissingOutputError as exc:
        message = str(exc)
    except (BotoCoreError, ClientError) as exc:
        # Anything else AWS refused (access denied, throttling): not a usage problem, but nothing more to do.
        print(f"error: {exc}", file=err)
        return EXIT_FAILED
    print(f"error: {message}", file=err)
    return EXIT_USAGE
