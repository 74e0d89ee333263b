"""Which file extension (Amazon Transcribe MediaFormat) a recording's MIME type is stored under, and back."""

from __future__ import annotations

# What browsers' MediaRecorder and file pickers report (FACTS.md "Browser"): Chromium records audio/webm (Opus),
# Firefox audio/ogg or audio/webm, Safari audio/mp4 (AAC). Video containers with only audio are common from phones.
MIME_EXTENSIONS = {
    "audio/webm": "webm",
    "video/webm": "webm",
    "audio/ogg": "ogg",
    "audio/opus": "ogg",
    "application/ogg": "ogg",
    "audio/mp4": "mp4",
    "video/mp4": "mp4",
    "audio/x-m4a": "m4a",
    "audio/m4a": "m4a",
    "audio/aac": "m4a",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/vnd.wave": "wav",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
    "audio/amr": "amr",
    "audio/amr-wb": "amr",
}
# The Content-Type an upload of each extension is stored with.
EXTENSION_MIME = {
    "webm": "audio/webm",
    "ogg": "audio/ogg",
    "mp4": "audio/mp4",
    "m4a": "audio/mp4",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "amr": "audio/amr",
}


def essence(content_type: str) -> str:
    """The MIME type without parameters, lower case: `audio/webm;codecs=opus` -> `audio/webm`."""
    return content_type.split(";", 1)[0].strip().lower()


def extension_for(content_type: str, file_name: str = "") -> str | None:
    """The extension for a MIME type; for a missing or generic type, the file name's audio extension; else None."""
    extension = MIME_EXTENSIONS.get(essence(content_type))
    if extension is not None:
        return extension
    if essence(content_type) in ("", "application/octet-stream"):
        suffix = file_name.rsplit(".", 1)[-1].lower() if "." in file_name else ""
        return suffix if suffix in EXTENSION_MIME else None
    return None
