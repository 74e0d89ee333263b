"""web/auth.js in headless Chromium: the Cognito hosted UI's authorization-code flow with PKCE, against a fake.

The hosted UI's three endpoints (authorize, token, logout) are answered by Playwright's request routing as
Cognito documents them; the page is served by the local web server with `auth` in its config.json. What is
checked is what the JWT authorizer on AWS relies on: every API call carries the ID token as a bearer token,
the code is exchanged with the verifier whose S256 challenge was sent, and the `code` leaves the address bar.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from local.web_server import LocalWebServer
from tests.local.browser_support import browser_page, chromium_missing
from tests.local.web_support import moto_web_server

DOMAIN = "https://speech-to-image-test.auth.eu-west-1.amazoncognito.com"
CLIENT_ID = "1example23456789"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


ID_TOKEN = (
    ".".join(
        _b64url(json.dumps(part).encode())
        for part in (
            {"alg": "RS256", "kid": "test"},
            {"sub": "a1b2c3d4", "email": "ada@example.com", "token_use": "id"},
        )
    )
    + "."
    + _b64url(b"signature")
)


@pytest.fixture(scope="module")
def server() -> Iterator[LocalWebServer]:
    """The page served with hosted-UI settings whose redirect URI is the server itself."""
    missing = chromium_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {missing}; .ci/run installs it")
        pytest.skip(f"{missing}; CI installs it and runs this test")
    with moto_web_server(max_upload_bytes=10_000) as web:
        web.config.page_config["auth"] = {
            "domain": DOMAIN,
            "clientId": CLIENT_ID,
            "redirectUri": web.url,
            "scopes": ["openid", "email"],
        }
        yield web


class FakeHostedUi:
    """Cognito's /oauth2/authorize, /oauth2/token and /logout, answering and remembering each request."""

    def __init__(self, redirect_uri: str) -> None:
        self.redirect_uri = redirect_uri
        self.authorize: dict[str, str] = {}
        self.token: dict[str, str] = {}
        self.logout: dict[str, str] = {}

    def __call__(self, route: Any) -> None:
        request = route.request
        url = urlsplit(request.url)
        query = {name: values[0] for name, values in parse_qs(url.query).items()}
        if url.path == "/oauth2/authorize":
            self.authorize = query
            target = f"{self.redirect_uri}?code=the-code&state={query['state']}"
            route.fulfill(status=302, headers={"Location": target})
        elif url.path == "/oauth2/token":
            self.token = {name: values[0] for name, values in parse_qs(request.post_data or "").items()}
            tokens = {"id_token": ID_TOKEN, "access_token": "access", "refresh_token": "refresh", "expires_in": 3600}
            route.fulfill(
                status=200,
                content_type="application/json",
                headers={"Access-Control-Allow-Origin": "*"},
                body=json.dumps(tokens),
            )
        elif url.path == "/logout":
            self.logout = query
            route.fulfill(status=302, headers={"Location": query["logout_uri"]})
        else:
            route.fulfill(status=404, body="not found")


def test_sign_in_with_pkce_then_every_api_call_carries_the_id_token(server: LocalWebServer) -> None:
    hosted_ui = FakeHostedUi(server.url)
    api_calls: list[tuple[str, str | None]] = []
    with browser_page() as page:
        page.route(f"{DOMAIN}/**", hosted_ui)
        page.on(
            "request",
            lambda request: (
                api_calls.append((request.url, request.headers.get("authorization")))
                if "/api/" in request.url
                else None
            ),
        )
        page.goto(server.url)
        sign_in = page.get_by_role("button", name="Sign in")
        sign_in.wait_for(state="visible")
        assert api_calls == []  # nothing is asked of the API before signing in

        with page.expect_response(lambda response: response.url.endswith("/api/uploads")) as history:
            sign_in.click()
        assert history.value.status == 200
        page.get_by_role("button", name="Sign out").wait_for(state="visible")

        authorize = hosted_ui.authorize
        assert authorize["response_type"] == "code"
        assert authorize["client_id"] == CLIENT_ID
        assert authorize["redirect_uri"] == server.url
        assert authorize["scope"] == "openid email"
        assert authorize["code_challenge_method"] == "S256"
        token = hosted_ui.token
        assert token["grant_type"] == "authorization_code"
        assert (token["code"], token["client_id"], token["redirect_uri"]) == ("the-code", CLIENT_ID, server.url)
        # PKCE: the verifier sent with the code is the one whose SHA-256 was the challenge.
        assert _b64url(hashlib.sha256(token["code_verifier"].encode()).digest()) == authorize["code_challenge"]

        assert "code=" not in page.url
        assert page.locator("#account-name").inner_text() == "ada@example.com"
        assert api_calls and all(header == f"Bearer {ID_TOKEN}" for _, header in api_calls)

        page.get_by_role("button", name="Sign out").click()
        page.get_by_role("button", name="Sign in").wait_for(state="visible")
        assert hosted_ui.logout == {"client_id": CLIENT_ID, "logout_uri": server.url}


def test_a_forged_state_is_refused(server: LocalWebServer) -> None:
    with browser_page() as page:
        page.goto(f"{server.url}?code=stolen&state=forged")
        page.get_by_test_id("error").wait_for(state="visible")
        assert "does not match" in page.locator("#error-reason").inner_text()
