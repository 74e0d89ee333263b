"""Entry point of the speech-recognition child process (see `local.asr.RemoteTranscriber`)."""

from __future__ import annotations

import argparse
import os
import sys

from local.asr import serve

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="local mode's speech recognition process")
    parser.add_argument("--model", help="faster-whisper model folder or name (default: the bundled tiny.en)")
    args = parser.parse_args()
    # The protocol owns stdout; anything the recogniser prints goes to the log instead.
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.exit(serve(sys.stdin.buffer, protocol, args.model))
