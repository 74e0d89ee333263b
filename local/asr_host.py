"""Entry point of the speech-recognition child process (see `local.asr.RemoteTranscriber`)."""

from __future__ import annotations

import os
import sys

from local.asr import serve

if __name__ == "__main__":
    # The protocol owns stdout; anything the recogniser prints goes to the log instead.
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.exit(serve(sys.stdin.buffer, protocol))
