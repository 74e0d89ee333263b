"""`make preflight`: before the first deploy, check what no template can show, and say how to fix each finding.

Credentials and region, the CDK bootstrap stack, the Deep Learning Container and the Powertools layer in the
region, the SageMaker endpoint quota for the instance type, Transcribe's concurrent-job quota, the model
archive in the model bucket, and an autoscaled endpoint whose instance type would change. Every call is a
read. The configuration comes from the same builder `infra/app.py` uses (cdk.json context plus `-c key=value`).
Exit status 0 only when no check fails; a check that could not run (a missing permission) is a warning.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from infra.config import ConfigError, PipelineConfig
from ops.preflight_checks import (
    CheckResult,
    Context,
    CouldNotCheck,
    Status,
    check_bootstrap,
    check_dlc_region,
    check_endpoint_quota,
    check_instance_type_change,
    check_model_archive,
    check_powertools_layer,
    check_transcribe_quota,
)

REPO = Path(__file__).resolve().parents[1]
# In the order a first deploy meets them, with the name each reports under.
CHECKS: tuple[tuple[str, Callable[[Context], CheckResult]], ...] = (
    ("Deep Learning Container", check_dlc_region),
    ("CDK bootstrap", check_bootstrap),
    ("Powertools layer", check_powertools_layer),
    ("SageMaker endpoint quota", check_endpoint_quota),
    ("Transcribe concurrent jobs", check_transcribe_quota),
    ("Model archive", check_model_archive),
    ("Endpoint instance type", check_instance_type_change),
)
NO_CREDENTIALS_FIX = "configure credentials (aws configure, aws sso login, or AWS_PROFILE=...) and run again"


def load_context(repo: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """CDK context as the CLI sees it: cdk.json, then cdk.context.json, then `-c key=value` (strings)."""
    context: dict[str, Any] = dict(json.loads((repo / "cdk.json").read_text()).get("context", {}))
    cached = repo / "cdk.context.json"
    if cached.exists():
        context.update(json.loads(cached.read_text()))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"-c {item!r}: expected key=value")
        context[key] = value
    return context


def check_credentials(client: Callable[[str], Any], config: PipelineConfig) -> tuple[CheckResult, str | None]:
    """Who the credentials are (sts:GetCallerIdentity needs no permission) and whether it is the right account."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    name = "Credentials"
    try:
        identity = client("sts").get_caller_identity()
    except NoCredentialsError:
        return CheckResult(name, Status.FAIL, "no AWS credentials found", NO_CREDENTIALS_FIX), None
    except (ClientError, BotoCoreError) as error:
        return CheckResult(name, Status.FAIL, f"the credentials do not work: {error}", NO_CREDENTIALS_FIX), None
    account = identity["Account"]
    if config.account and config.account != account:
        return (
            CheckResult(
                name,
                Status.FAIL,
                f"the credentials are for account {account}, the configuration deploys to {config.account}",
                "use credentials for that account, or change/remove the 'account' context value",
            ),
            None,
        )
    return CheckResult(name, Status.OK, f"account {account} as {identity['Arn']}"), account


def run_checks(config: PipelineConfig, region: str | None, client: Callable[[str], Any]) -> list[CheckResult]:
    """Every check, in order; none raises: what AWS refuses is a warning, what cannot run yet is skipped."""
    if not region:
        return [
            CheckResult(
                "Region",
                Status.FAIL,
                "no AWS region configured",
                "pass --region, set AWS_REGION, or set 'region' in cdk.json context",
            )
        ]
    identity, account = check_credentials(client, config)
    results = [CheckResult("Region", Status.OK, region), identity]
    ctx = Context(config=config, region=region, client=client, account=account)
    for name, check in CHECKS:
        if account is None and check is not check_dlc_region:
            results.append(CheckResult(name, Status.SKIPPED, "needs working credentials"))
            continue
        try:
            results.append(check(ctx))
        except CouldNotCheck as reason:
            results.append(CheckResult(name, Status.WARN, f"could not check: {reason}"))
    return results


def report(results: Sequence[CheckResult], out: TextIO) -> int:
    """Print one line per check (and its fix); the exit status: 1 if any failed."""
    for result in results:
        out.write(f"[{result.status.value.upper():^7}] {result.name}: {result.detail}\n")
        if result.fix and result.status is not Status.OK:
            out.write(f"          fix: {result.fix}\n")
    failed = sum(result.status is Status.FAIL for result in results)
    warned = sum(result.status is Status.WARN for result in results)
    if failed:
        out.write(f"\n{failed} check(s) failed, {warned} warning(s): fix the failures before deploying.\n")
        return 1
    out.write(f"\nNo check failed ({warned} warning(s)): ready for make deploy-infra / make deploy-endpoint.\n")
    return 0


def boto3_clients(region: str | None, profile: str | None) -> tuple[Callable[[str], Any], str | None]:
    """A cached client per service from one session; the session's region unless one is given."""
    import boto3

    session = boto3.session.Session(profile_name=profile, region_name=region)
    cache: dict[str, Any] = {}

    def client(service: str) -> Any:
        if service not in cache:
            cache[service] = session.client(service, region_name=session.region_name)
        return cache[service]

    return client, session.region_name


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    """Command line: python -m ops.preflight [-c key=value ...] [--region R] [--profile P]."""
    parser = argparse.ArgumentParser(prog="python -m ops.preflight", description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--context", action="append", default=[], help="CDK context override key=value")
    parser.add_argument("--region", help="AWS region (default: context 'region', then AWS_REGION / your profile)")
    parser.add_argument("--profile", help="AWS profile (default: AWS_PROFILE / the default profile)")
    args = parser.parse_args(argv)
    try:
        config = PipelineConfig.from_context(load_context(REPO, args.context).get)
    except ConfigError as error:
        out.write(f"configuration error: {error}\n")
        return 2
    from botocore.exceptions import ProfileNotFound

    try:
        client, region = boto3_clients(args.region or config.region, args.profile)
    except ProfileNotFound as error:
        out.write(f"{error}\n")
        return 2
    return report(run_checks(config, region, client), out)


if __name__ == "__main__":
    sys.exit(main())
