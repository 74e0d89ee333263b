"""Set one string value in cdk.json's context without reformatting the file the user edits by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path


class ContextFileError(ValueError):
    """The file has no single `"name": "..."` line to update; the message says what to do."""


def set_context_value(cdk_json: Path, name: str, value: str) -> bool:
    """Point `name` at `value` in `cdk_json` (context); True when the file changed.

    Only the value of the one `"name": "..."` pair changes, so the user's layout and comments in the diff
    stay theirs; the result is checked to parse with the new value in `context`.
    """
    path = Path(cdk_json)
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(rf'("{re.escape(name)}"\s*:\s*)"(?:[^"\\]|\\.)*"')
    matches = pattern.findall(text)
    if len(matches) != 1:
        raise ContextFileError(
            f'{path} has {len(matches)} "{name}": "..." entries, expected one under "context": '
            f"set it by hand to {value!r}, or deploy with -c {name}={value}"
        )
    updated = pattern.sub(lambda match: match.group(1) + json.dumps(value), text)
    if json.loads(updated).get("context", {}).get(name) != value:
        raise ContextFileError(f'{path}: "{name}" is not under "context": set context.{name} to {value!r} by hand')
    if updated == text:
        return False
    path.write_text(updated, encoding="utf-8")
    return True
