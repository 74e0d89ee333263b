"""The S3 key layout and Transcribe job names of docs/CONTRACTS.md, in one place."""

from __future__ import annotations

import hashlib
import re
import string
from pathlib import PurePosixPath
from typing import NamedTuple

# Transcribe's OutputKey accepts only these characters. '!' is left out on purpose: it is
# the escape character, so it is itself escaped and the mapping stays reversible.
_SAFE_CHARS = frozenset(string.ascii_letters + string.digits + "-_.*'()/")
_HEX = frozenset("0123456789ABCDEF")
# Both Transcribe's OutputKey and S3 object keys are limited to 1024 (characters / UTF-8 bytes).
MAX_OUTPUT_KEY_CHARS = 1024
MAX_S3_KEY_BYTES = 1024
MAX_JOB_NAME_CHARS = 200
JOB_NAME_HASH_CHARS = 20
JOB_NAME_RE = re.compile(r"^[0-9a-zA-Z._-]+$")
_JOB_NAME_UNSAFE = re.compile(r"[^0-9a-zA-Z._-]+")
_JOB_NAME_PREFIX_RE = re.compile(r"[0-9a-zA-Z._-]*")
# A prefix must leave room for at least one stem character, the '-' and the hash.
MAX_JOB_NAME_PREFIX_CHARS = MAX_JOB_NAME_CHARS - JOB_NAME_HASH_CHARS - 2
TRANSCRIPT_SUFFIX = ".json"


class KeyMappingError(ValueError):
    """A key cannot be mapped to (or back from) the layout within AWS's limits."""


class ImageKeys(NamedTuple):
    """Where one upload's results go in the output bucket."""

    png: str
    metadata: str
    html: str


def escape_key(key: str) -> str:
    """Escape a source key for Transcribe's OutputKey: each other UTF-8 byte becomes `!XX`."""
    return "".join(chr(byte) if chr(byte) in _SAFE_CHARS else f"!{byte:02X}" for byte in key.encode("utf-8"))


def unescape_key(escaped: str) -> str:
    """Invert `escape_key`; raises `KeyMappingError` for text `escape_key` cannot produce."""
    data = bytearray()
    index = 0
    while index < len(escaped):
        char = escaped[index]
        if char == "!":
            code = escaped[index + 1 : index + 3]
            if len(code) != 2 or not set(code) <= _HEX:
                raise KeyMappingError(f"bad escape {escaped[index : index + 3]!r} at {index} in {escaped!r}")
            byte = int(code, 16)
            # Only the canonical form is accepted, so escape(unescape(x)) == x as well.
            if chr(byte) in _SAFE_CHARS:
                raise KeyMappingError(f"needless escape {escaped[index : index + 3]!r} at {index} in {escaped!r}")
            data.append(byte)
            index += 3
        elif char in _SAFE_CHARS:
            data.append(ord(char))
            index += 1
        else:
            raise KeyMappingError(f"character {char!r} at {index} cannot occur in an escaped key: {escaped!r}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise KeyMappingError(f"escaped key {escaped!r} is not UTF-8 once unescaped: {error}") from None


def transcript_key(prefix: str, source_key: str) -> str:
    """The transcript's key (Transcribe's OutputKey) for a source key; `KeyMappingError` if too long."""
    key = f"{prefix}{escape_key(source_key)}{TRANSCRIPT_SUFFIX}"
    if len(key) > MAX_OUTPUT_KEY_CHARS:
        raise KeyMappingError(
            f"the transcript key would be {len(key)} characters; Amazon Transcribe allows {MAX_OUTPUT_KEY_CHARS}"
        )
    return key


def source_key_from_transcript_key(prefix: str, key: str) -> str:
    """Recover the source key from a transcript key, without any API call."""
    if not key.startswith(prefix) or not key.endswith(TRANSCRIPT_SUFFIX) or len(key) <= len(prefix) + 5:
        raise KeyMappingError(f"{key!r} is not a transcript key ({prefix}<escaped key>{TRANSCRIPT_SUFFIX})")
    return unescape_key(key[len(prefix) : -len(TRANSCRIPT_SUFFIX)])


def normalise_etag(etag: str) -> str:
    """The ETag without quotes: events carry it bare, HeadObject quoted."""
    return etag.strip().strip('"')


def check_job_name_prefix(prefix: str) -> str:
    """Return `prefix` if it can start a Transcribe job name, else raise `ValueError` saying why."""
    if not _JOB_NAME_PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"job name prefix {prefix!r} may hold only letters, digits, '.', '_' and '-'")
    if len(prefix) > MAX_JOB_NAME_PREFIX_CHARS:
        raise ValueError(f"job name prefix {prefix!r} is longer than {MAX_JOB_NAME_PREFIX_CHARS} characters")
    return prefix


def job_name(source_key: str, etag: str, prefix: str) -> str:
    """Deterministic Transcribe job name: `<prefix><key stem>-<20 hex of sha256(key + "\\n" + etag)>`, <= 200 chars."""
    check_job_name_prefix(prefix)
    digest = hashlib.sha256(f"{source_key}\n{normalise_etag(etag)}".encode()).hexdigest()[:JOB_NAME_HASH_CHARS]
    stem = _JOB_NAME_UNSAFE.sub("_", PurePosixPath(source_key).stem).strip("._-") or "audio"
    # The hash alone tells objects apart; the stem is only there for people, so it is what gets cut.
    room = MAX_JOB_NAME_CHARS - len(prefix) - JOB_NAME_HASH_CHARS - 1
    return f"{prefix}{stem[:room]}-{digest}"


def image_keys(prefix: str, source_key: str) -> ImageKeys:
    """The image, metadata and HTML keys for a source key."""
    base = f"{prefix}{source_key}"
    return ImageKeys(
        png=_checked_s3_key(f"{base}.png"),
        metadata=_checked_s3_key(f"{base}.json"),
        html=_checked_s3_key(f"{base}.html"),
    )


def error_key(prefix: str, source_key: str) -> str:
    """The error record's key for a source key (shortened, with a hash, when S3's limit needs it)."""
    key = f"{prefix}{source_key}.json"
    if len(key.encode("utf-8")) <= MAX_S3_KEY_BYTES:
        return key
    # An upload key near S3's 1024-byte limit leaves no room for prefix and suffix: keep what fits,
    # add a hash of the whole key so two such uploads never share a record (the record names the key).
    digest = hashlib.sha256(source_key.encode("utf-8")).hexdigest()[:16]
    tail = f"~{digest}.json"
    room = MAX_S3_KEY_BYTES - len(prefix.encode("utf-8")) - len(tail)
    head = source_key.encode("utf-8")[:room].decode("utf-8", errors="ignore")
    return f"{prefix}{head}{tail}"


def _checked_s3_key(key: str) -> str:
    size = len(key.encode("utf-8"))
    if size > MAX_S3_KEY_BYTES:
        raise KeyMappingError(f"{key[:80]!r}... is {size} bytes; S3 keys are limited to {MAX_S3_KEY_BYTES}")
    return key
