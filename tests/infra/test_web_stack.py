"""WebStack: who can reach the page and the API, from where, how often, and what the API's function may touch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import RemovalPolicy
from aws_cdk import aws_s3 as s3
from cfnlint.api import lint

from infra.components.web_api import ROUTES
from infra.components.web_site import WebSite
from infra.nag import render_intrinsic
from infra.web_config import AUTH_CONFIG_KEYS, SITE_CONFIG_KEYS

from .conftest import REGION
from .web_support import WebSynth, synth_web


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> WebSynth:
    """cdk.json's defaults (async endpoint), with throttling set away from its defaults."""
    return synth_web(tmp_path_factory.mktemp("web"), webThrottleRateLimit="3", webThrottleBurstLimit="7")


@pytest.fixture(scope="module")
def web_realtime(tmp_path_factory: pytest.TempPathFactory) -> WebSynth:
    """A real-time endpoint and retained resources: WebStack must not care which."""
    return synth_web(tmp_path_factory.mktemp("web-realtime"), endpointMode="realtime", removal="retain")


def distribution_domain(web: WebSynth) -> dict[str, Any]:
    return {"Fn::GetAtt": [web.logical_id(web.web.site.distribution), "DomainName"]}


def site_origin(web: WebSynth) -> dict[str, Any]:
    return {"Fn::Join": ["", ["https://", distribution_domain(web)]]}


def test_every_route_needs_a_token_from_the_user_pool(web: WebSynth) -> None:
    routes = web.resources("AWS::ApiGatewayV2::Route")
    assert {route["Properties"]["RouteKey"] for route in routes.values()} == {
        f"{method.value} {path}" for path, method in ROUTES
    }
    authorizer_id, authorizer = web.one("AWS::ApiGatewayV2::Authorizer")
    for route in routes.values():
        assert route["Properties"]["AuthorizationType"] == "JWT", route
        assert route["Properties"]["AuthorizerId"] == {"Ref": authorizer_id}
    pool = web.logical_id(web.web.auth.user_pool)
    client = web.logical_id(web.web.auth.client)
    # Tokens from this pool only, issued to the page's client only.
    assert authorizer["Properties"]["JwtConfiguration"] == {
        "Audience": [{"Ref": client}],
        "Issuer": {"Fn::Join": ["", [f"https://cognito-idp.{REGION}.amazonaws.com/", {"Ref": pool}]]},
    }


def test_the_site_bucket_is_private_and_answers_only_its_distribution(web: WebSynth) -> None:
    bucket = web.logical_id(web.web.site.bucket)
    distribution = web.logical_id(web.web.site.distribution)
    props = web.resources("AWS::S3::Bucket")[bucket]["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    oac_id, oac = web.one("AWS::CloudFront::OriginAccessControl")
    assert oac["Properties"]["OriginAccessControlConfig"]["SigningBehavior"] == "always"
    [origin] = web.resources("AWS::CloudFront::Distribution")[distribution]["Properties"]["DistributionConfig"][
        "Origins"
    ]
    assert origin["OriginAccessControlId"] == {"Fn::GetAtt": [oac_id, "Id"]}
    [policy] = [
        p for p in web.resources("AWS::S3::BucketPolicy").values() if p["Properties"]["Bucket"] == {"Ref": bucket}
    ]
    reads = [
        statement
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if statement["Effect"] == "Allow" and "s3:GetObject" in _list(statement["Action"])
    ]
    # CloudFront reads objects, and only for this distribution; nobody else reads (the CDK's emptier deletes).
    assert reads == [
        {
            "Action": "s3:GetObject",
            "Effect": "Allow",
            "Principal": {"Service": "cloudfront.amazonaws.com"},
            "Resource": {"Fn::Join": ["", [{"Fn::GetAtt": [bucket, "Arn"]}, "/*"]]},
            "Condition": {
                "StringEquals": {
                    "AWS:SourceArn": {
                        "Fn::Join": [
                            "",
                            [
                                "arn:",
                                {"Ref": "AWS::Partition"},
                                ":cloudfront::",
                                {"Ref": "AWS::AccountId"},
                                ":distribution/",
                                {"Ref": distribution},
                            ],
                        ]
                    }
                }
            },
        }
    ]


def test_the_page_is_served_over_https_with_security_headers(web: WebSynth) -> None:
    _, distribution = web.one("AWS::CloudFront::Distribution")
    config = distribution["Properties"]["DistributionConfig"]
    assert config["DefaultCacheBehavior"]["ViewerProtocolPolicy"] == "redirect-to-https"
    assert config["DefaultRootObject"] == "index.html"
    _, headers = web.one("AWS::CloudFront::ResponseHeadersPolicy")
    security = headers["Properties"]["ResponseHeadersPolicyConfig"]["SecurityHeadersConfig"]
    assert security["FrameOptions"]["FrameOption"] == "DENY"
    assert security["StrictTransportSecurity"]["AccessControlMaxAgeSec"] >= 180 * 24 * 3600
    assert "frame-ancestors 'none'" in security["ContentSecurityPolicy"]["ContentSecurityPolicy"]


def test_cors_allows_only_the_sites_origin_on_the_api_and_the_input_bucket(web: WebSynth) -> None:
    _, api = web.one("AWS::ApiGatewayV2::Api")
    cors = api["Properties"]["CorsConfiguration"]
    assert cors["AllowOrigins"] == [site_origin(web)]
    assert set(cors["AllowMethods"]) == {"GET", "POST"}
    # The input bucket's rules are set by WebStack's custom resource: the same single origin, POST only.
    assert web.web.upload_cors.rules[0]["AllowedMethods"] == ["POST"]
    assert web.resolve(web.web.upload_cors.rules[0]["AllowedOrigins"]) == [site_origin(web)]
    _, custom = web.one("Custom::AWS")
    create = render_intrinsic(custom["Properties"]["Create"])
    assert '"action":"putBucketCors"' in create
    assert f'"AllowedOrigins":["https://<{web.logical_id(web.web.site.distribution)}.DomainName>"]' in create
    assert '"action":"deleteBucketCors"' in render_intrinsic(custom["Properties"]["Delete"])
    # Its role may set CORS on exactly the input bucket, nothing else.
    input_arn = render_intrinsic(web.resolve(web.web.pipeline.input_bucket_arn))
    policies = [p for p in web.resources("AWS::IAM::Policy").values() if "CustomResourcePolicy" in str(p["Properties"])]
    [statement] = policies[0]["Properties"]["PolicyDocument"]["Statement"]
    assert (statement["Action"], render_intrinsic(statement["Resource"])) == ("s3:PutBucketCORS", input_arn)
    assert input_arn.startswith("InfraStack:ExportsOutput") and "Input" in input_arn


def test_the_api_stage_is_throttled_and_logged(web: WebSynth) -> None:
    _, stage = web.one("AWS::ApiGatewayV2::Stage")
    props = stage["Properties"]
    assert props["StageName"] == "$default"
    assert props["DefaultRouteSettings"] == {"ThrottlingRateLimit": 3, "ThrottlingBurstLimit": 7}
    assert props["AccessLogSettings"]["DestinationArn"] == {
        "Fn::GetAtt": [web.logical_id(web.web.api.access_logs), "Arn"]
    }


def test_nobody_can_sign_up_alone(web: WebSynth) -> None:
    _, pool = web.one("AWS::Cognito::UserPool")
    props = pool["Properties"]
    assert props["AdminCreateUserConfig"]["AllowAdminCreateUserOnly"] is True
    assert props["MfaConfiguration"] == "ON"
    assert props["EnabledMfas"] == ["SOFTWARE_TOKEN_MFA"]
    _, client = web.one("AWS::Cognito::UserPoolClient")
    client_props = client["Properties"]
    assert client_props["GenerateSecret"] is False
    assert client_props["AllowedOAuthFlows"] == ["code"]
    # Sign-in returns only to the page itself.
    url = {"Fn::Join": ["", ["https://", distribution_domain(web), "/"]]}
    assert client_props["CallbackURLs"] == [url, site_origin(web)]
    assert client_props["LogoutURLs"] == [url, site_origin(web)]


def test_the_api_function_may_touch_only_web_uploads(web: WebSynth) -> None:
    role = web.logical_id(web.web.api.role)
    [policy] = [p for p in web.resources("AWS::IAM::Policy").values() if {"Ref": role} in p["Properties"]["Roles"]]
    found = {
        (
            action,
            render_intrinsic(resource),
            repr(statement.get("Condition")),
        )
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        for action in _list(statement["Action"])
        for resource in _list(statement["Resource"])
    }
    exports = {
        name: render_intrinsic(web.resolve(getattr(web.web.pipeline, name)))
        for name in ("input_bucket_arn", "output_bucket_arn", "ledger_table_arn")
    }
    inputs, outputs, ledger = exports["input_bucket_arn"], exports["output_bucket_arn"], exports["ledger_table_arn"]
    logs = f"<{web.logical_id(web.web.api.log_group)}.Arn>"
    leading = repr({"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["web/*"]}})
    assert found == {
        ("logs:CreateLogStream", logs, "None"),
        ("logs:PutLogEvents", logs, "None"),
        ("s3:PutObject", f"{inputs}/web/*", "None"),
        ("s3:ListBucket", inputs, repr({"StringLike": {"s3:prefix": ["web/*"]}})),
        ("s3:GetObject", f"{outputs}/images/web/*", "None"),
        ("s3:GetObject", f"{outputs}/errors/web/*", "None"),
        ("dynamodb:GetItem", ledger, leading),
        ("dynamodb:BatchGetItem", ledger, leading),
    }
    assert "Input" in inputs and "Output" in outputs and "Ledger" in ledger
    function = _web_function(web)
    assert function["Properties"]["Handler"] == "web_api.handler.handler"
    assert function["Properties"]["Role"] == {"Fn::GetAtt": [role, "Arn"]}


def test_the_api_function_gets_the_contracts_environment(web: WebSynth) -> None:
    variables = _web_function(web)["Properties"]["Environment"]["Variables"]
    for name in ("INPUT_BUCKET", "OUTPUT_BUCKET", "LEDGER_TABLE"):
        assert render_intrinsic(variables[name]).startswith("InfraStack:ExportsOutputRef"), name
    assert variables["WEB_UPLOAD_PREFIX"] == "web/"
    assert variables["WEB_MAX_UPLOAD_BYTES"] == str(25 * 1024 * 1024)
    assert variables["WEB_MAX_RECORDING_SECONDS"] == "120"
    assert variables["WEB_URL_TTL_SECONDS"] == "900"
    assert variables["JOB_NAME_PREFIX"] == "s2i-"
    assert variables["MEDIA_FORMATS"] == "mp3,mp4,m4a,wav,flac,ogg,webm,amr"
    assert (variables["IMAGE_PREFIX"], variables["ERROR_PREFIX"]) == ("images/", "errors/")


def test_config_json_tells_the_page_where_the_api_and_sign_in_are(web: WebSynth) -> None:
    config = web.resolve(web.web.site_config)
    assert tuple(config) == SITE_CONFIG_KEYS
    assert tuple(config["auth"]) == AUTH_CONFIG_KEYS
    assert config["auth"]["clientId"] == {"Ref": web.logical_id(web.web.auth.client)}
    assert config["auth"]["scopes"] == ["openid", "email"]
    assert "amazoncognito.com" in render_intrinsic(config["auth"]["domain"])
    assert render_intrinsic(config["auth"]["redirectUri"]).startswith("https://<")
    api_id, _ = web.one("AWS::ApiGatewayV2::Api")
    # The API's own endpoint, with no trailing slash: the page appends the routes (/uploads).
    assert config["apiUrl"] == {"Fn::GetAtt": [api_id, "ApiEndpoint"]}
    assert (config["maxRecordingSeconds"], config["maxUploadBytes"]) == (120, 25 * 1024 * 1024)
    assert config["region"] == REGION


def test_web_stack_can_be_destroyed_alone(web: WebSynth) -> None:
    # Nothing refers to WebStack: InfraStack and the endpoint stack import none of its values.
    assert web.web not in web.infra.dependencies
    for stack in web.web.node.root.node.children:
        if stack is not web.web and hasattr(stack, "dependencies"):
            assert web.web not in stack.dependencies, stack.node.id
    assert "WebStack" not in (web.assembly_dir / "InfraStack.template.json").read_text()


@pytest.mark.parametrize("fixture", ["web", "web_realtime"])
def test_no_unacknowledged_nag_findings_and_no_cfn_lint_errors(fixture: str, request: pytest.FixtureRequest) -> None:
    result: WebSynth = request.getfixturevalue(fixture)
    assert result.validation_report["pluginReports"] == []
    matches = lint((result.assembly_dir / "WebStack.template.json").read_text(), regions=[REGION])
    assert [f"{m.rule.id}: {m.message}" for m in matches if m.rule.severity == "error"] == []
    assert {m.rule.id for m in matches if m.rule.severity == "warning"} <= {"W3005"}


def test_every_web_acknowledgment_has_a_reviewable_reason(web: WebSynth) -> None:
    reasons = [
        entry.data
        for construct in web.web.node.find_all()
        for entry in construct.node.metadata
        if "acknowledg" in entry.type.lower()
    ]
    assert len(reasons) >= 10, "CloudFront, Cognito, the API role and the CDK's deploy-time functions"
    for data in reasons:
        assert len(json.dumps(data)) > 80, f"acknowledgment without a real reason: {data}"


def test_a_missing_page_fails_synth_with_its_path(tmp_path: Path) -> None:
    stack = cdk.Stack(cdk.App())
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}/index.html not found"):
        WebSite(stack, "Site", site_dir=tmp_path, logs=s3.Bucket(stack, "Logs"), removal=RemovalPolicy.DESTROY)


def _web_function(web: WebSynth) -> dict[str, Any]:
    found = web.template.find_resources("AWS::Lambda::Function", {"Properties": {"Handler": "web_api.handler.handler"}})
    assert len(found) == 1
    return next(iter(found.values()))


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
