"""Which model the endpoint serves (an S3 archive or a pinned Hugging Face Hub revision), and its time limits.

The model part of `PipelineConfig`: built from CDK context in `infra/app.py` like the rest. No aws_cdk
imports, so local mode can use it too. The endpoint container reads the result through the SD_* variables
that `infra/components/sd_endpoint.py` sets (stable-diffusion-custom-inference/code/inference.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from infra.config_error import ConfigError

S3 = "s3"
HUB = "hub"
MODEL_SOURCES = (S3, HUB)
# SageMaker ends a real-time invocation after 60 s (InvokeEndpoint).
REALTIME_TIME_LIMIT_S = 60
# InvocationTimeoutSeconds of every InvokeEndpointAsync request (1..3600; SageMaker's default, set explicitly so
# the endpoint's work budget and the request agree). A request past it frees the GPU for the ones queued behind.
ASYNC_TIME_LIMIT_S = 900
# A Hub repository as `org/name` (huggingface_hub's validate_repo_id: word characters, '-' and '.'; 96 at most).
HF_MODEL_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
# A full commit: a branch or tag can move, and every instance that starts later would load other weights.
COMMIT_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
# Secrets Manager names: 1-512 of letters, digits and /_+=.@- (CreateSecret).
SECRET_NAME_RE = re.compile(r"^[A-Za-z0-9/_+=.@-]{1,512}$")
# Secrets Manager appends '-' and six random characters to every secret's ARN; a NAME that already ends like
# that cannot be told apart from a partial ARN (AWS's own advice: do not name a secret so).
SECRET_SUFFIX_LOOKALIKE_RE = re.compile(r"-[A-Za-z0-9]{6}$")


@dataclass(frozen=True)
class ModelSource:
    """Where the endpoint's model comes from; `modelDataKey` is the archive (code-only for the hub)."""

    # "s3": the archive under modelDataKey holds the model and code/; "hub": it holds only code/ and the
    # container downloads hf_model_id at hf_model_revision when it starts.
    source: str = S3
    hf_model_id: str | None = None
    hf_model_revision: str | None = None
    # Name of an AWS Secrets Manager secret whose value is a Hugging Face token (gated models); None: no token.
    hf_token_secret_name: str | None = None

    @property
    def is_hub(self) -> bool:
        """True when the container downloads the model from the Hugging Face Hub."""
        return self.source == HUB


def container_environment(
    model: ModelSource, *, instance_type: str, time_limit_seconds: int, token_secret_arn: str | None = None
) -> dict[str, str]:
    """The SD_* variables model_fn reads: where the model comes from, the instance and the request time limit.

    The deployed endpoint (infra/components/sd_endpoint.py) and local mode's endpoint both run with these.
    """
    environment = {
        "SD_MODEL_SOURCE": model.source,
        "SD_INSTANCE_TYPE": instance_type,
        "SD_TIME_LIMIT_SECONDS": str(time_limit_seconds),
    }
    if not model.is_hub:
        # Everything the model needs is in the archive; never reach for the Hub.
        return environment | {"HF_HUB_OFFLINE": "1"}
    # Never HF_MODEL_ID: the toolkit would download the whole repository (every variant and checkpoint) before
    # model_fn runs; model_fn downloads only the files it loads.
    environment |= {"SD_HUB_MODEL_ID": str(model.hf_model_id), "SD_HUB_REVISION": str(model.hf_model_revision)}
    if token_secret_arn is not None:
        environment["SD_HUB_TOKEN_SECRET_ARN"] = token_secret_arn
    return environment


def time_limit_seconds(is_async: bool) -> int:
    """The longest one request may run on the endpoint in this mode (its work budget is sized to it)."""
    return ASYNC_TIME_LIMIT_S if is_async else REALTIME_TIME_LIMIT_S


def model_source_from_context(get: Callable[[str], Any]) -> ModelSource:
    """Read modelSource, hfModelId, hfModelRevision and hfTokenSecretName; `ConfigError` names key and fix."""
    source = _text(get("modelSource")) or S3
    if source not in MODEL_SOURCES:
        raise ConfigError(f"context 'modelSource'={source!r} is invalid: choose one of {list(MODEL_SOURCES)}")
    model_id = _text(get("hfModelId"))
    revision = _text(get("hfModelRevision"))
    secret = _text(get("hfTokenSecretName"))
    if source == S3:
        given = [key for key, value in (("hfModelId", model_id), ("hfModelRevision", revision)) if value]
        given += ["hfTokenSecretName"] if secret else []
        if given:
            raise ConfigError(
                f"context {', '.join(repr(key) for key in given)} only apply to modelSource=hub, but modelSource is "
                "s3 (the archive under modelDataKey holds the model): remove them, or set -c modelSource=hub"
            )
        return ModelSource()
    if not model_id:
        raise ConfigError(
            "context modelSource=hub needs 'hfModelId', the Hub repository to serve "
            "(cdk -c hfModelId=stabilityai/sd-turbo)"
        )
    if not HF_MODEL_ID_RE.match(model_id) or ".." in model_id or "--" in model_id:
        raise ConfigError(
            f"context 'hfModelId'={model_id!r} is invalid: expected a Hub repository as org/name, "
            "such as stabilityai/stable-diffusion-xl-base-1.0"
        )
    if not revision:
        raise ConfigError(
            f"context modelSource=hub needs 'hfModelRevision', the commit of {model_id} to serve: copy the "
            f"40-character sha from https://huggingface.co/{model_id}/commits/main (cdk -c hfModelRevision=<sha>)"
        )
    if not COMMIT_SHA_RE.match(revision):
        raise ConfigError(
            f"context 'hfModelRevision'={revision!r} is not a commit sha: give the full 40-character commit "
            f"(https://huggingface.co/{model_id}/commits/main). A branch or tag can move, and then an instance "
            "started later (every scale-out from zero) would serve other weights than the one before it, with no "
            "deploy to show for it"
        )
    if secret is not None:
        _check_secret_name(secret)
    return ModelSource(source=HUB, hf_model_id=model_id, hf_model_revision=revision, hf_token_secret_name=secret)


def _check_secret_name(name: str) -> None:
    if name.startswith("arn:"):
        raise ConfigError(
            f"context 'hfTokenSecretName'={name!r} is an ARN: give the secret's NAME (the part after 'secret:' "
            "without the 6-character suffix), e.g. -c hfTokenSecretName=speech-to-image/hf-token"
        )
    if not SECRET_NAME_RE.match(name):
        raise ConfigError(
            f"context 'hfTokenSecretName'={name!r} is invalid: an AWS Secrets Manager secret name has 1-512 "
            "letters, digits and /_+=.@- characters"
        )
    if SECRET_SUFFIX_LOOKALIKE_RE.search(name):
        raise ConfigError(
            f"context 'hfTokenSecretName'={name!r} ends in a hyphen and six characters, which Secrets Manager's "
            "ARNs use for their random suffix: the role's grant could not tell the name from another secret's. "
            "Create the secret under a name that does not end so (e.g. speech-to-image/hf-token)"
        )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None
