#!/usr/bin/env bash
# Package a diffusers text-to-image folder (SD 1.x, 2.x, XL, turbo) as model.tar.gz and upload it to the bucket
# and key the deployed InfraStack names (its ModelBucketName / ModelDataKey outputs).
#
#   stable-diffusion-custom-inference/upload-model.sh path/to/stable-diffusion-v1-4 [--region eu-west-1]
#   stable-diffusion-custom-inference/upload-model.sh --model-dir path/to/stable-diffusion-v1-4 --no-upload
#
# A thin wrapper (the name users of the original project know) around
# `python -m sd_tools.package_model`, run with the repository's virtualenv (make setup).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
python="$repo/.venv/bin/python"

usage="usage: $0 MODEL_DIR | --model-dir MODEL_DIR [--output model.tar.gz] [--stack-name InfraStack] [--region R] [--no-upload]"
if [[ $# -eq 0 ]]; then
    echo "$usage" >&2
    exit 2
fi
if [[ ! -x "$python" ]]; then
    echo "error: no virtualenv at $repo/.venv: run 'make setup' in $repo first" >&2
    exit 2
fi

# The original script took the model folder as its first argument: keep accepting that.
if [[ $1 != -* ]]; then
    set -- --model-dir "$@"
fi
# Uploading is the point of this script; --no-upload only builds model.tar.gz.
upload=(--upload)
args=()
for arg in "$@"; do
    if [[ $arg == --no-upload ]]; then
        upload=()
    else
        args+=("$arg")
    fi
done

# PYTHONPATH instead of cd: relative paths in the arguments keep meaning the caller's folder.
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m sd_tools.package_model "${args[@]}" "${upload[@]}"
