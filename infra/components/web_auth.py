"""Sign-in for the web page: a Cognito user pool nobody can join alone, its hosted sign-in and the page's client."""

from __future__ import annotations

from aws_cdk import Aws, Duration, Fn, RemovalPolicy
from aws_cdk import aws_cognito as cognito
from constructs import Construct

from infra.nag import acknowledge
from infra.web_config import AUTH_SCOPES, DEFAULT_AUTH_DOMAIN_STEM, TEMPORARY_PASSWORD_DAYS, WebConfig

# Sessions: an hour per token, a week before the person signs in again.
TOKEN_VALIDITY = Duration.hours(1)
REFRESH_TOKEN_VALIDITY = Duration.days(7)


class WebAuth(Construct):
    """A user pool with self sign-up off (`make add-user` invites people), MFA by authenticator app.

    The page signs in through the hosted UI with the authorization-code grant and PKCE: the client is
    public (a page cannot keep a secret) and only redirects back to the site's own URL.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        web: WebConfig,
        site_url: str,
        site_origin: str,
        removal: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        self.user_pool = cognito.UserPool(
            self,
            "UserPool",
            self_sign_up_enabled=False,
            sign_in_aliases=cognito.SignInAliases(email=True),
            auto_verify=cognito.AutoVerifiedAttrs(email=True),
            account_recovery=cognito.AccountRecovery.EMAIL_ONLY,
            password_policy=cognito.PasswordPolicy(
                min_length=12,
                require_lowercase=True,
                require_uppercase=True,
                require_digits=True,
                require_symbols=True,
                temp_password_validity=Duration.days(TEMPORARY_PASSWORD_DAYS),
            ),
            # Every sign-in needs a code from an authenticator app (TOTP costs nothing; SMS would, per message):
            # a stolen password alone must not let anyone start GPU work on the deployer's bill.
            mfa=cognito.Mfa.REQUIRED,
            mfa_second_factor=cognito.MfaSecondFactor(otp=True, sms=False),
            feature_plan=cognito.FeaturePlan.ESSENTIALS,
            user_invitation=cognito.UserInvitationConfig(
                email_subject="Your speech-to-image sign-in",
                email_body=(
                    "You can now turn speech into pictures at "
                    + site_url
                    + " . Sign in as {username} with the temporary password {####} (valid "
                    + f"{TEMPORARY_PASSWORD_DAYS} days); you will choose your own password and add an "
                    "authenticator app."
                ),
            ),
            removal_policy=removal,
        )
        acknowledge(
            self.user_pool,
            "AwsSolutions-COG8",
            "Essentials feature plan, not Plus: Plus adds threat protection at $0.02 per monthly active user with "
            "no free tier; this pool has self sign-up off, MFA required and a handful of invited users.",
        )
        prefix = web.auth_domain_prefix or Fn.join("", [DEFAULT_AUTH_DOMAIN_STEM, Aws.ACCOUNT_ID])
        self.domain = self.user_pool.add_domain(
            "Domain", cognito_domain=cognito.CognitoDomainOptions(domain_prefix=prefix)
        )
        self.redirect_uri = site_url
        self.client = self.user_pool.add_client(
            "WebClient",
            generate_secret=False,
            # Only the hosted UI signs people in; no password flows reach the pool from the page.
            auth_flows=cognito.AuthFlow(),
            o_auth=cognito.OAuthSettings(
                flows=cognito.OAuthFlows(authorization_code_grant=True),
                scopes=[cognito.OAuthScope.custom(scope) for scope in AUTH_SCOPES],
                # With and without the trailing slash: a browser may report either as the page's address.
                callback_urls=[site_url, site_origin],
                logout_urls=[site_url, site_origin],
            ),
            supported_identity_providers=[cognito.UserPoolClientIdentityProvider.COGNITO],
            prevent_user_existence_errors=True,
            access_token_validity=TOKEN_VALIDITY,
            id_token_validity=TOKEN_VALIDITY,
            refresh_token_validity=REFRESH_TOKEN_VALIDITY,
        )

    @property
    def domain_url(self) -> str:
        """The hosted sign-in base URL: https://<prefix>.auth.<region>.amazoncognito.com."""
        return self.domain.base_url()
