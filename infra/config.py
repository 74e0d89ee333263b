"""One typed, frozen configuration for the whole app, built from CDK context.

`infra/app.py` is the only place that reads CDK context (or the environment); every
construct and stack receives a `PipelineConfig`. This module imports nothing from
aws_cdk so the local runtime can build the same configuration cheaply.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from infra.config_error import ConfigError
from infra.model_config import ModelSource, model_source_from_context, time_limit_seconds

# Formats Amazon Transcribe accepts for batch jobs (its MediaFormat enum).
TRANSCRIBE_MEDIA_FORMATS = ("mp3", "mp4", "m4a", "wav", "flac", "ogg", "webm", "amr")
# Amazon Transcribe's own limit for batch jobs is 2 GB.
TRANSCRIBE_MAX_MEDIA_MB = 2048
# CloudWatch Logs accepts only these retention periods (days).
LOG_RETENTION_DAYS = (
    1,
    3,
    5,
    7,
    14,
    30,
    60,
    90,
    120,
    150,
    180,
    365,
    400,
    545,
    731,
    1096,
    1827,
    2192,
    2557,
    2922,
    3288,
    3653,
)
ENDPOINT_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
LANGUAGE_CODE_RE = re.compile(r"^[a-z]{2,3}-[A-Z]{2}$")
ACCOUNT_RE = re.compile(r"^\d{12}$")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
# Deliberately loose: SNS confirms the address by e-mail; this only catches typos such as a missing '@'.
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# Keys an image request may carry; inference.py validates the values again.
IMAGE_PARAMETER_KEYS = ("num_inference_steps", "guidance_scale", "height", "width", "seed", "negative_prompt")


@dataclass(frozen=True)
class ImageParameters:
    """Stable Diffusion request parameters sent with every prompt: only those configured.

    An unset one (None) is left out of the request, so the endpoint applies the model family's default
    (native size, steps and guidance; docs/MODELS.md): SDXL draws 1024x1024, SD-Turbo 1 step at guidance 0.
    """

    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None
    # None: each upload gets a seed derived from its key, so a repeat gives the same image.
    seed: int | None = None
    negative_prompt: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Parameters as the endpoint's `parameters` object: the configured ones only."""
        return {f.name: value for f in fields(self) if (value := getattr(self, f.name)) not in (None, "")}


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the stacks, the Lambdas and local mode need to agree on."""

    # None: environment-agnostic stacks, resolved from the deploying credentials.
    account: str | None = None
    region: str | None = None
    instance_type: str = "ml.g4dn.xlarge"
    # A physical name on purpose: InfraStack grants InvokeEndpoint on it and the
    # endpoint stack can be destroyed and redeployed alone under the same name.
    endpoint_name: str = "speech-to-image-sd"
    # The archive the endpoint's SageMaker model loads (`make upload-model` prints its content-hash key); with
    # modelSource=hub it holds only code/. A new key is a new SageMaker model, never a swap under a running one.
    model_data_key: str = "models/stable-diffusion-v1-4/model.tar.gz"
    # modelSource=s3 (the archive holds the model) or hub (hfModelId at hfModelRevision, downloaded at start-up).
    model: ModelSource = field(default_factory=ModelSource)
    removal: str = "destroy"
    log_retention_days: int = 14
    media_formats: tuple[str, ...] = TRANSCRIBE_MEDIA_FORMATS
    max_media_mb: int = 500
    # "en-US" (any Transcribe language code) or "auto" for automatic identification.
    language_code: str = "en-US"
    language_options: tuple[str, ...] = ("en-US", "en-GB", "de-DE", "fr-FR", "es-US")
    image: ImageParameters = field(default_factory=ImageParameters)
    # The most invoke_sd functions its queue's event source mapping runs at once (MaximumConcurrency,
    # 2..1000): the endpoint's GPUs are the bottleneck, more parallel calls would only queue there.
    # No reserved concurrency: new accounts have only 10 executions and a reservation fails the deploy.
    invoke_sd_concurrency: int = 2
    # The same bound for transcribe_trigger: a burst of uploads waits in its queue instead of running into
    # Amazon Transcribe's request rate and concurrent-job quota.
    transcribe_trigger_concurrency: int = 5
    # An upload whose ledger stage has not moved for this long gets a `stuck` error record (the sweeper).
    stuck_after_minutes: int = 180
    # "async" (default): SageMaker asynchronous inference, which queues requests in S3 and scales the GPU to
    # zero; "realtime": an always-on endpoint (the 60 s / 6 MB limits apply, and it bills every hour).
    endpoint_mode: str = "async"
    # Instances the endpoint may scale between; None: 0 for async (pay only while there is work), 1 for realtime.
    min_instances: int | None = None
    max_instances: int = 1
    # How long a request may wait in the async queue (e.g. while the GPU starts from zero) before it expires.
    request_ttl_minutes: int = 120
    # How long the async endpoint stays up with nothing to do before it scales in (to min_instances).
    scale_in_idle_minutes: int = 15
    # A transcript whose mean word confidence is below this is treated as "no speech detected":
    # Amazon Transcribe gives clear speech 0.9 and more; recognisers guessing at noise score far lower.
    min_transcript_confidence: float = 0.2
    # None: the alarm topic has no subscription (subscribe to it later in the console).
    alarm_email: str | None = None

    @property
    def destroy_on_removal(self) -> bool:
        """True when `cdk destroy` should delete buckets and their objects."""
        return self.removal == "destroy"

    @property
    def is_async(self) -> bool:
        """True when the endpoint is asynchronous (requests and results go through S3 and SNS)."""
        return self.endpoint_mode == "async"

    @property
    def min_instance_count(self) -> int:
        """The endpoint's lower scaling bound, with the mode's default applied."""
        if self.min_instances is not None:
            return self.min_instances
        return 0 if self.is_async else 1

    @property
    def time_limit_seconds(self) -> int:
        """How long one request may run on the endpoint: 60 s real-time, the async InvocationTimeoutSeconds."""
        return time_limit_seconds(self.is_async)

    @property
    def max_media_bytes(self) -> int:
        """The size limit for uploads, in bytes."""
        return self.max_media_mb * 1024 * 1024

    @classmethod
    def from_context(cls, get: Callable[[str], Any]) -> PipelineConfig:
        """Build from a context getter such as `app.node.try_get_context`.

        Values may be JSON types (cdk.json) or strings (`cdk -c key=value`).
        """
        default = cls()
        image_ctx = _as_mapping(get("imageParameters"), "imageParameters")
        unknown = set(image_ctx) - set(IMAGE_PARAMETER_KEYS)
        if unknown:
            raise ConfigError(f"imageParameters: unknown keys {sorted(unknown)}; allowed: {list(IMAGE_PARAMETER_KEYS)}")
        # Unset keys stay None: the endpoint fills in the model family's defaults.
        image = ImageParameters(
            num_inference_steps=_int(
                image_ctx.get("num_inference_steps"), "imageParameters.num_inference_steps", None, 1, 150
            ),
            guidance_scale=_float(image_ctx.get("guidance_scale"), "imageParameters.guidance_scale", None, 0.0, 30.0),
            height=_size(image_ctx.get("height"), "imageParameters.height"),
            width=_size(image_ctx.get("width"), "imageParameters.width"),
            seed=_optional_int(image_ctx.get("seed"), "imageParameters.seed", None, 0, 2**32 - 1),
            negative_prompt=str(image_ctx.get("negative_prompt") or ""),
        )
        config = cls(
            account=_str(get("account"), "account", default.account, ACCOUNT_RE, "a 12-digit AWS account id"),
            region=_str(get("region"), "region", default.region, REGION_RE, "an AWS region such as eu-west-1"),
            instance_type=_str(
                get("instanceType"),
                "instanceType",
                default.instance_type,
                re.compile(r"^ml\.[a-z0-9]+\.[a-z0-9]+$"),
                "a SageMaker instance type such as ml.g4dn.xlarge",
            ),
            endpoint_name=_str(
                get("endpointName"),
                "endpointName",
                default.endpoint_name,
                ENDPOINT_NAME_RE,
                "1-63 letters, digits and hyphens",
            ),
            model_data_key=_str(
                get("modelDataKey"),
                "modelDataKey",
                default.model_data_key,
                re.compile(r"^[\w./-]+\.tar\.gz$"),
                "an S3 key ending in .tar.gz",
            ),
            model=model_source_from_context(get),
            removal=_choice(get("removal"), "removal", default.removal, ("destroy", "retain")),
            log_retention_days=_choice(
                _int(get("logRetentionDays"), "logRetentionDays", default.log_retention_days, 1, 3653),
                "logRetentionDays",
                default.log_retention_days,
                LOG_RETENTION_DAYS,
            ),
            media_formats=_formats(get("mediaFormats"), default.media_formats),
            max_media_mb=_int(get("maxMediaMb"), "maxMediaMb", default.max_media_mb, 1, TRANSCRIBE_MAX_MEDIA_MB),
            language_code=_language(get("languageCode"), default.language_code),
            language_options=_languages(get("languageOptions"), default.language_options),
            image=image,
            invoke_sd_concurrency=_concurrency(
                get("invokeSdConcurrency"), "invokeSdConcurrency", default.invoke_sd_concurrency
            ),
            transcribe_trigger_concurrency=_concurrency(
                get("transcribeTriggerConcurrency"),
                "transcribeTriggerConcurrency",
                default.transcribe_trigger_concurrency,
            ),
            stuck_after_minutes=_int(
                get("stuckAfterMinutes"), "stuckAfterMinutes", default.stuck_after_minutes, 15, 7 * 24 * 60
            ),
            endpoint_mode=_choice(get("endpointMode"), "endpointMode", default.endpoint_mode, ("async", "realtime")),
            min_instances=_optional_int(get("minInstances"), "minInstances", default.min_instances, 0, 10),
            max_instances=_int(get("maxInstances"), "maxInstances", default.max_instances, 1, 10),
            # InvokeEndpointAsync's RequestTTLSeconds allows 60..21600 s.
            request_ttl_minutes=_int(
                get("requestTtlMinutes"), "requestTtlMinutes", default.request_ttl_minutes, 1, 360
            ),
            scale_in_idle_minutes=_int(
                get("scaleInIdleMinutes"), "scaleInIdleMinutes", default.scale_in_idle_minutes, 5, 24 * 60
            ),
            min_transcript_confidence=_float(
                get("minTranscriptConfidence"), "minTranscriptConfidence", default.min_transcript_confidence, 0.0, 1.0
            ),
            alarm_email=_str(get("alarmEmail"), "alarmEmail", default.alarm_email, EMAIL_RE, "an e-mail address"),
        )
        return _check_endpoint_scaling(config)


def _check_endpoint_scaling(config: PipelineConfig) -> PipelineConfig:
    """Rules across keys: a real-time endpoint cannot scale to zero, and min may not exceed max."""
    if not config.is_async and config.min_instance_count < 1:
        raise ConfigError(
            "context 'minInstances'=0 needs endpointMode=async: a real-time endpoint cannot scale to zero "
            "(cdk -c endpointMode=async, or -c minInstances=1)"
        )
    if config.min_instance_count > config.max_instances:
        raise ConfigError(
            f"context 'minInstances'={config.min_instance_count} is more than 'maxInstances'={config.max_instances}"
        )
    return config


def _missing(value: Any) -> bool:
    return value is None or value == ""


def _str(value: Any, key: str, default: str | None, pattern: re.Pattern[str], what: str) -> str | None:
    if _missing(value):
        return default
    text = str(value)
    if not pattern.match(text):
        raise ConfigError(f"context '{key}'={text!r} is invalid: expected {what} (cdk -c {key}=...)")
    return text


def _choice(value: Any, key: str, default: Any, allowed: tuple[Any, ...]) -> Any:
    if _missing(value):
        return default
    if value not in allowed:
        raise ConfigError(f"context '{key}'={value!r} is invalid: choose one of {list(allowed)}")
    return value


def _int(value: Any, key: str, default: Any, low: int, high: int) -> Any:
    if _missing(value):
        return default
    # `True` is an int to Python but never a count: refuse it like any other non-number.
    if isinstance(value, bool):
        raise ConfigError(f"context '{key}'={value!r} is not a whole number")
    try:
        number = value if isinstance(value, int) else int(str(value), 10)
    except ValueError:
        raise ConfigError(f"context '{key}'={value!r} is not a whole number") from None
    if not low <= number <= high:
        raise ConfigError(f"context '{key}'={value!r} is out of range: expected {low}..{high}")
    return number


def _optional_int(value: Any, key: str, default: int | None, low: int, high: int) -> int | None:
    if isinstance(value, str) and value.lower() in ("none", "null", "off"):
        return None
    if _missing(value):
        return default
    return _int(value, key, 0, low, high)


def _concurrency(value: Any, key: str, default: int) -> int:
    # SQS event source mappings accept MaximumConcurrency 2..1000; the old "none" (no reservation) is gone.
    if isinstance(value, str) and value.lower() in ("none", "null", "off"):
        raise ConfigError(
            f"context '{key}'={value!r} is no longer needed: the function reads a queue and reserves no "
            f"concurrency, so it deploys on any account; give a number 2..1000 (cdk -c {key}=2)"
        )
    return _int(value, key, default, 2, 1000)


def _float(value: Any, key: str, default: Any, low: float, high: float) -> Any:
    if _missing(value):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"context '{key}'={value!r} is not a number") from None
    if not low <= number <= high:
        raise ConfigError(f"context '{key}'={value!r} is out of range: expected {low}..{high}")
    return number


def _size(value: Any, key: str) -> int | None:
    number = _int(value, key, None, 64, 1024)
    if number is not None and number % 8:
        raise ConfigError(
            f"context '{key}'={number} must be a multiple of 8 (Stable Diffusion works in 8-pixel latents)"
        )
    return number


def _as_list(value: Any, key: str) -> list[str]:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                raise ConfigError(f"context '{key}' is not valid JSON: {error}") from None
        else:
            value = [part for part in re.split(r"[,\s]+", text) if part]
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"context '{key}' must be a list of strings or a comma-separated string")
    return list(value)


def _as_mapping(value: Any, key: str) -> Mapping[str, Any]:
    if _missing(value):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ConfigError(f"context '{key}' is not valid JSON: {error}") from None
    if not isinstance(value, Mapping):
        raise ConfigError(f"context '{key}' must be a JSON object")
    return value


def _formats(value: Any, default: tuple[str, ...]) -> tuple[str, ...]:
    if _missing(value):
        return default
    formats = tuple(dict.fromkeys(item.lower().lstrip(".") for item in _as_list(value, "mediaFormats")))
    bad = [item for item in formats if item not in TRANSCRIBE_MEDIA_FORMATS]
    if bad or not formats:
        raise ConfigError(
            f"context 'mediaFormats' has {bad or 'nothing'}: Amazon Transcribe accepts {list(TRANSCRIBE_MEDIA_FORMATS)}"
        )
    return formats


def _language(value: Any, default: str) -> str | None:
    if _missing(value):
        return default
    text = str(value)
    if text != "auto" and not LANGUAGE_CODE_RE.match(text):
        raise ConfigError(
            f"context 'languageCode'={text!r} is invalid: use a Transcribe language code such as en-US, or 'auto'"
        )
    return text


def _languages(value: Any, default: tuple[str, ...]) -> tuple[str, ...]:
    if _missing(value):
        return default
    options = tuple(_as_list(value, "languageOptions"))
    bad = [item for item in options if not LANGUAGE_CODE_RE.match(item)]
    if bad or len(options) < 2:
        raise ConfigError("context 'languageOptions' needs at least two Transcribe language codes such as en-US,de-DE")
    return options
