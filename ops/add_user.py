"""`make add-user EMAIL=...`: invite a person to the deployed web app (its user pool has self sign-up off).

Cognito e-mails the person a temporary password and the page's address; at the first sign-in they choose
their own password and add an authenticator app (MFA is required).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from botocore.exceptions import ClientError

from infra.config import EMAIL_RE
from infra.web_config import TEMPORARY_PASSWORD_DAYS
from ops.stack import EXIT_FAILED, EXIT_USAGE, require, run_command, stack_outputs
from ops.stack import session as _session

DEFAULT_STACK = "WebStack"


def invite(cognito: Any, user_pool_id: str, email: str, *, resend: bool = False) -> str:
    """Create the user (or send the invitation again); the user's status as Cognito reports it."""
    arguments: dict[str, Any] = {
        "UserPoolId": user_pool_id,
        "Username": email,
        # The address is the one the invitation goes to, so it counts as verified (password resets use it).
        "UserAttributes": [{"Name": "email", "Value": email}, {"Name": "email_verified", "Value": "true"}],
        "DesiredDeliveryMediums": ["EMAIL"],
    }
    if resend:
        arguments["MessageAction"] = "RESEND"
    user = cognito.admin_create_user(**arguments)["User"]
    return str(user.get("UserStatus", ""))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ops.add_user",
        description="Invite a person to the web app: Cognito e-mails them a temporary password and the page's "
        "address. Exit status: 0 invited, 1 AWS refused, 2 usage problem (credentials, stack, address).",
    )
    parser.add_argument("email", metavar="EMAIL", help="the person's e-mail address (also their sign-in name)")
    parser.add_argument(
        "--resend",
        action="store_true",
        help="send the invitation again with a new temporary password (it expires after "
        f"{TEMPORARY_PASSWORD_DAYS} days)",
    )
    parser.add_argument("--stack", default=DEFAULT_STACK, help="the web stack's name (default: %(default)s)")
    parser.add_argument("--region", help="AWS region (default: your AWS configuration)")
    return parser


def main(argv: list[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Command line entry point."""
    args = _parser().parse_args(argv)
    out, err = out or sys.stdout, err or sys.stderr
    email = args.email.strip()
    if not EMAIL_RE.match(email):
        print(f"error: {args.email!r} is not an e-mail address", file=err)
        return EXIT_USAGE

    def add(session: Any) -> int:
        outputs = stack_outputs(session.client("cloudformation"), args.stack)
        pool_id, site_url = require(outputs, args.stack, "UserPoolId", "SiteUrl")
        try:
            status = invite(session.client("cognito-idp"), pool_id, email, resend=args.resend)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "UsernameExistsException":
                print(
                    f"error: {email} is already a user of {site_url}; to send a new temporary password run "
                    f"make add-user EMAIL={email} ADD_USER_ARGS=--resend (python -m ops.add_user {email} --resend)",
                    file=err,
                )
                return EXIT_FAILED
            if code == "UserNotFoundException" and args.resend:
                print(f"error: {email} is not a user yet: run without --resend", file=err)
                return EXIT_FAILED
            raise
        again = "again " if args.resend else ""
        print(
            f"Invited {email} {again}({status}). Cognito e-mails a temporary password, valid "
            f"{TEMPORARY_PASSWORD_DAYS} days, from no-reply@verificationemail.com.\n"
            f"They sign in at {site_url}, choose their own password and add an authenticator app.",
            file=out,
        )
        return 0

    # `_session` is looked up at call time, so tests can hand in their own.
    return run_command(
        add, make_session=lambda region: _session(region), region=args.region, stack_name=args.stack, err=err
    )


if __name__ == "__main__":
    raise SystemExit(main())
