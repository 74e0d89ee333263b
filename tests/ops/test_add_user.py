"""`make add-user`: invite a person to the deployed web app's user pool (moto's Cognito)."""

from __future__ import annotations

import io

import boto3
import pytest

from ops import add_user as module
from ops.add_user import main
from tests.ops.deployed import DeployedSession, Outputs
from tests.ops.support import REGION

SITE = "https://d111111abcdef8.cloudfront.net/"


@pytest.fixture
def pool(aws: None, monkeypatch: pytest.MonkeyPatch) -> str:
    """A deployed WebStack: its user pool in moto, its outputs naming it."""
    cognito = boto3.client("cognito-idp", region_name=REGION)
    pool_id = cognito.create_user_pool(PoolName="WebStack-UserPool")["UserPool"]["Id"]
    session = DeployedSession(Outputs({"WebStack": {"UserPoolId": pool_id, "SiteUrl": SITE}}))
    monkeypatch.setattr(module, "_session", lambda region: session)
    return pool_id


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_a_new_person_is_invited_by_e_mail(pool: str) -> None:
    code, out, err = run("ada@example.com")

    assert (code, err) == (0, "")
    assert "Invited ada@example.com (FORCE_CHANGE_PASSWORD)" in out
    assert f"They sign in at {SITE}" in out
    user = boto3.client("cognito-idp", region_name=REGION).admin_get_user(UserPoolId=pool, Username="ada@example.com")
    attributes = {item["Name"]: item["Value"] for item in user["UserAttributes"]}
    assert attributes["email"] == "ada@example.com"
    assert attributes["email_verified"] == "true"
    assert user["UserStatus"] == "FORCE_CHANGE_PASSWORD"


def test_inviting_someone_twice_says_how_to_resend(pool: str) -> None:
    assert run("ada@example.com")[0] == 0

    code, _, err = run("ada@example.com")

    assert code == 1
    assert "ada@example.com is already a user" in err
    assert "--resend" in err


def test_a_bad_address_is_refused_before_any_aws_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "_session", lambda region: pytest.fail("no session for a bad address"))

    code, _, err = run("not-an-address")

    assert code == 2
    assert "'not-an-address' is not an e-mail address" in err


def test_a_missing_web_stack_says_how_to_deploy_it(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "_session", lambda region: DeployedSession(Outputs({})))

    code, _, err = run("ada@example.com")

    assert code == 2
    assert f"stack WebStack not found in region {REGION}: deploy it first (make deploy-web)" in err


def test_a_stack_without_a_user_pool_is_not_this_projects(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    session = DeployedSession(Outputs({"InfraStack": {"InputBucketName": "in"}}))
    monkeypatch.setattr(module, "_session", lambda region: session)

    code, _, err = run("ada@example.com", "--stack", "InfraStack")

    assert code == 2
    assert "stack InfraStack has no UserPoolId output" in err


def test_resend_sends_a_new_invitation_only_to_a_known_person(pool: str) -> None:
    assert run("ada@example.com")[0] == 0

    code, out, _ = run("ada@example.com", "--resend")
    assert code == 0
    assert "Invited ada@example.com again" in out

    code, _, err = run("bob@example.com", "--resend")
    assert code == 1
    assert "bob@example.com is not a user yet: run without --resend" in err
