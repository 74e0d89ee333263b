#!/usr/bin/env bash
# Regenerate the committed audio fixtures (tests/fixtures/audio/) and the bundled sample
# (examples/astronaut-riding-a-horse.mp3) from text, with a TTS voice that speech recognisers
# hear well.
#
# Tools (Debian 12 versions used for the committed files):
#   festival 2.5.0 + festvox-us-slt-hts  voice cmu_us_slt_arctic_hts (US English, female, HTS)
#   sox 14.4.2                           resampling, padding, noise, FLAC and Ogg Vorbis
#   lame 3.100                           MP3
#   PyAV 18.1 (the project's .venv)      M4A/MP4 (AAC), WebM (Opus), AMR-NB: scripts/encode_audio.py
#   python3                              reads manifest.json, writes the random-bytes file
# Install: sudo apt-get install -y festival festvox-us-slt-hts sox libsox-fmt-all lame; make setup
#
# Why this voice: a clear US English voice; pocketsphinx heard it with a word error rate of ~0.2
# (espeak-ng: ~0.9), Whisper tiny.en with ~0.05.
#
# Deterministic: the same tool versions give byte-identical files (sox -R seeds its noise,
# sox -D disables random dither, PyAV encodes bitexact, the random bytes use a fixed seed).
# Only the tests' inputs change here; the tests need none of these tools.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
FIXTURES=tests/fixtures/audio
EXAMPLES=examples
VOICE=cmu_us_slt_arctic_hts
SAMPLE_TEXT="a photo of an astronaut riding a horse on mars"

missing=()
for tool in text2wave festival sox lame python3; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "error: missing tools: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install -y festival festvox-us-slt-hts sox libsox-fmt-all lame python3" >&2
    exit 1
fi
PYAV=.venv/bin/python
if ! "$PYAV" -c 'import av' >/dev/null 2>&1; then
    echo "error: PyAV is not installed in .venv: run make setup" >&2
    exit 1
fi
# text2wave silently falls back to another voice when this one is absent: check it explicitly.
if ! festival -b "(voice_${VOICE})" >/dev/null 2>&1; then
    echo "error: Festival voice ${VOICE} is not installed: sudo apt-get install -y festvox-us-slt-hts" >&2
    exit 1
fi
for fmt in ogg flac; do
    if ! sox -h 2>&1 | grep -q "AUDIO FILE FORMATS:.* ${fmt}"; then
        echo "error: this sox cannot handle ${fmt}: sudo apt-get install -y libsox-fmt-all" >&2
        exit 1
    fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# speak TEXT OUT.wav: Festival synthesis (its native rate) at the voice's normal speed.
speak() {
    printf '%s\n' "$1" >"$tmp/text.txt"
    text2wave -eval "(voice_${VOICE})" -o "$2" "$tmp/text.txt"
}

# encode IN.wav OUT: pick codec and rate from OUT's extension. Short leading/trailing
# silence, as a phone recording has; low rates keep every file within 10-50 KB.
encode() {
    local in=$1 out=$2
    case "$out" in
    *.mp3)
        sox -R -D "$in" -r 22050 -c 1 -b 16 "$tmp/enc.wav" pad 0.4 0.6
        lame --quiet --noreplaygain -m m -b 48 "$tmp/enc.wav" "$out"
        ;;
    *.wav)
        # Plain 16 kHz PCM, as a browser or phone upload would be; short padding for size.
        sox -R -D "$in" -r 16000 -c 1 -b 16 "$out" pad 0.05 0.1
        ;;
    *.ogg)
        sox -R -D "$in" -r 22050 -c 1 -C 2 "$out" pad 0.4 0.6
        ;;
    *.flac)
        sox -R -D "$in" -r 16000 -c 1 -b 16 -C 8 "$out" pad 0.2 0.2
        ;;
    *.m4a | *.mp4 | *.webm | *.amr)
        sox -R -D "$in" -r 16000 -c 1 -b 16 "$tmp/enc.wav" pad 0.4 0.6
        "$PYAV" scripts/encode_audio.py "$tmp/enc.wav" "$out"
        ;;
    *)
        echo "error: no encoder for $out" >&2
        exit 1
        ;;
    esac
}

# Speech: every entry of manifest.json's "speech" (file name -> spoken text).
python3 - "$FIXTURES/manifest.json" >"$tmp/speech.tsv" <<'PY'
import json, sys
for name, entry in json.load(open(sys.argv[1], encoding="utf-8"))["speech"].items():
    print(f"{name}\t{entry['text']}")
PY
while IFS=$'\t' read -r name text; do
    speak "$text" "$tmp/speech.wav"
    encode "$tmp/speech.wav" "$FIXTURES/$name"
done <"$tmp/speech.tsv"

speak "$SAMPLE_TEXT" "$tmp/sample.wav"
encode "$tmp/sample.wav" "$EXAMPLES/astronaut-riding-a-horse.mp3"

# No speech: 2 s of digital silence; 2 s of white noise at about -16 dBFS RMS (loud enough
# that a level-only voice-activity check calls it speech); 2 s of white noise pulsing 4 times a
# second, like syllables (wind, rustling): pocketsphinx, without a voice check, heard "thank" in it.
sox -R -n -r 22050 -c 1 -b 16 "$tmp/silence.wav" trim 0 2
lame --quiet --noreplaygain -m m -b 48 "$tmp/silence.wav" "$FIXTURES/silence.mp3"
sox -R -n -r 22050 -c 1 -b 16 "$tmp/noise.wav" synth 2 whitenoise vol 0.5
lame --quiet --noreplaygain -m m -b 48 "$tmp/noise.wav" "$FIXTURES/noise.mp3"
sox -R -n -r 22050 -c 1 -b 16 "$tmp/bursts.wav" synth 2 whitenoise vol 0.3 tremolo 4 90
lame --quiet --noreplaygain -m m -b 48 "$tmp/bursts.wav" "$FIXTURES/noise-bursts.mp3"

# Undecodable: random bytes with an .mp3 name (fixed seed), and an empty file.
python3 -c 'import random, sys; sys.stdout.buffer.write(random.Random(20240229).randbytes(16384))' \
    >"$FIXTURES/not-audio.mp3"
: >"$FIXTURES/empty.mp3"

cat >"$FIXTURES/readme.txt" <<'TXT'
Audio fixtures for the speech-to-image tests.

Speech recordings are synthesised from text with Festival's cmu_us_slt_arctic_hts voice, one
file per format Amazon Transcribe accepts (mp3, wav, ogg, flac; m4a, mp4, webm and amr encoded
with PyAV); manifest.json lists each file's spoken text, which the tests compare the transcript
with (word error rate); long-description.mp3 (25 s) says more than Stable Diffusion reads (77 tokens).
silence.mp3, noise.mp3 and noise-bursts.mp3 hold no speech. not-audio.mp3 (random bytes)
and empty.mp3 (0 bytes) cannot be decoded. This file itself stands for an upload that is
not audio at all.

Regenerate everything with scripts/make_audio_fixtures.sh.
TXT

ls -l "$FIXTURES" "$EXAMPLES"/*.mp3
