"""Package a diffusers Stable Diffusion folder as the endpoint's model.tar.gz and optionally upload it.

    python -m sd_tools.package_model --model-dir stable-diffusion-v1-4 [--output model.tar.gz]
        [--upload] [--stack-name InfraStack] [--region eu-west-1]

The archive has the toolkit layout SageMaker extracts into /opt/ml/model: the model files at
the root and `code/inference.py` + `code/requirements.txt` beside them. `--upload` reads the
bucket and key from the deployed InfraStack's outputs (ModelBucketName, ModelDataKey), so the
endpoint stack finds the model where it expects it.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

REPO_ROOT = Path(__file__).resolve().parents[1]
CODE_DIR = REPO_ROOT / "stable-diffusion-custom-inference" / "code"
CODE_FILES = ("inference.py", "requirements.txt")
REQUIRED_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHTED_SUBFOLDERS = ("unet", "vae", "text_encoder")
WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
)
PIPELINE_CLASS = "StableDiffusionPipeline"
BUCKET_OUTPUT = "ModelBucketName"
KEY_OUTPUT = "ModelDataKey"
DEFAULT_STACK = "InfraStack"
# Weight files diffusers never reads when loading the default variant in PyTorch: other
# variants (fp16/ema/non_ema), Flax and ONNX exports. Shipping them only makes the archive
# (and the endpoint's download) bigger.
UNUSED_WEIGHTS = re.compile(r"(\.(fp16|ema|non_ema)\.(safetensors|bin)|\.msgpack|\.onnx|\.onnx_data|\.ckpt)$")
MiB = 1024 * 1024


class PackagingError(Exception):
    """A problem the user can fix; str() is a one-line message that says how."""


@dataclass(frozen=True)
class UploadTarget:
    """Where the endpoint stack expects model.tar.gz."""

    bucket: str
    key: str

    @property
    def uri(self) -> str:
        """The s3:// URI of the target."""
        return f"s3://{self.bucket}/{self.key}"


def validate_model_dir(model_dir: Path) -> dict[str, Any]:
    """Check that `model_dir` is a diffusers StableDiffusionPipeline folder; return its model_index.json."""
    model_dir = Path(model_dir)
    hint = "pass a diffusers Stable Diffusion v1.x folder such as a download of CompVis/stable-diffusion-v1-4"
    if not model_dir.is_dir():
        raise PackagingError(f"{model_dir} is not a folder: {hint}")
    index_file = model_dir / "model_index.json"
    if not index_file.is_file():
        raise PackagingError(f"{model_dir} has no model_index.json, so it is not a diffusers pipeline: {hint}")
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PackagingError(f"{index_file} is not valid JSON ({error}): {hint}") from None
    class_name = index.get("_class_name") if isinstance(index, dict) else None
    if class_name != PIPELINE_CLASS:
        raise PackagingError(f"{index_file} says _class_name={class_name!r}, not {PIPELINE_CLASS!r}: {hint}")
    missing = [name for name in REQUIRED_SUBFOLDERS if not (model_dir / name).is_dir()]
    if missing:
        raise PackagingError(f"{model_dir} lacks the subfolder(s) {', '.join(missing)}: {hint}")
    # inference.py loads the default variant: a folder with only fp16/ema weights would package
    # fine and then fail on the endpoint, after a ten-minute deploy.
    unloadable = [
        name for name in WEIGHTED_SUBFOLDERS if not any((model_dir / name / f).is_file() for f in WEIGHT_FILES)
    ]
    if unloadable:
        raise PackagingError(
            f"{model_dir}: no default-variant weights ({' or '.join(WEIGHT_FILES)}) in {', '.join(unloadable)}; "
            "re-download the full-precision files or re-save the pipeline without variant=..."
        )
    if not (model_dir / "safety_checker").is_dir():
        # Not an error: users may serve their own filtered model. Say it loudly, once, here.
        print(
            f"warning: {model_dir} has no safety_checker/: the endpoint will serve images unchecked "
            "(nsfw_content_detected: null)",
            file=sys.stderr,
        )
    return index


def iter_model_files(model_dir: Path, *, keep_all: bool = False) -> Iterator[tuple[Path, str]]:
    """Yield (file, archive name) for every model file to ship, sorted, skipping hidden and unused files."""
    model_dir = Path(model_dir)
    # followlinks: Hugging Face cache snapshots and hand-made folders may link subfolders elsewhere.
    for root, dirs, files in os.walk(model_dir, followlinks=True):
        folder = Path(root)
        top = folder == model_dir
        # Our code/ replaces any existing one; .git/.cache/.gitattributes are not model files.
        dirs[:] = sorted(name for name in dirs if not name.startswith(".") and not (top and name == "code"))
        for name in sorted(files):
            path = folder / name
            if name.startswith(".") or (not keep_all and _unused(path)):
                continue
            yield path, path.relative_to(model_dir).as_posix()


# transformers names its weights differently from diffusers: pytorch_model.bin <-> model.safetensors.
SAFETENSORS_TWIN = {"pytorch_model.bin": "model.safetensors"}


def _unused(path: Path) -> bool:
    if UNUSED_WEIGHTS.search(path.name):
        return True
    # Both diffusers and transformers load safetensors when present: a .bin twin is dead weight.
    twin = SAFETENSORS_TWIN.get(path.name, path.with_suffix(".safetensors").name)
    return path.suffix == ".bin" and (path.parent / twin).is_file()


def _tar_info(name: str, size: int, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    # No local user names or mtimes in the archive: the same inputs give the same tar stream.
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    return info


def _write_tar(stream: BinaryIO, model_dir: Path, code_dir: Path, model_name: str, keep_all: bool) -> int:
    count = 0
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path, name in iter_model_files(model_dir, keep_all=keep_all):
            size = path.stat().st_size  # stat() follows symlinks: the HF cache stores files as links to blobs
            with path.open("rb") as handle:
                tar.addfile(_tar_info(name, size), handle)
            count += 1
        for file_name in CODE_FILES:
            source = code_dir / file_name
            with source.open("rb") as handle:
                tar.addfile(_tar_info(f"code/{file_name}", source.stat().st_size), handle)
        info = json.dumps({"name": model_name}).encode("utf-8")
        tar.addfile(_tar_info("code/model_info.json", len(info)), io.BytesIO(info))
    return count


def build_archive(
    model_dir: Path,
    output: Path,
    *,
    code_dir: Path = CODE_DIR,
    model_name: str | None = None,
    keep_all: bool = False,
    use_pigz: bool | None = None,
) -> Path:
    """Write `output` (model.tar.gz) from `model_dir` plus `code_dir`; pigz compresses when on PATH."""
    model_dir = Path(model_dir).resolve()
    output = Path(output).resolve()
    validate_model_dir(model_dir)
    missing = [name for name in CODE_FILES if not (Path(code_dir) / name).is_file()]
    if missing:
        raise PackagingError(f"{code_dir} lacks {', '.join(missing)}: run from a full checkout of the repository")
    if output.is_relative_to(model_dir):
        raise PackagingError(f"--output {output} is inside the model folder: write the archive somewhere else")
    name = model_name or model_dir.name
    pigz = shutil.which("pigz") if use_pigz in (None, True) else None
    if use_pigz and pigz is None:
        raise PackagingError("pigz is not on PATH: install it (apt-get install pigz) or leave it out")
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    try:
        with partial.open("wb") as out:
            if pigz:
                # pigz compresses on every core: a 5 GB model takes minutes instead of tens of minutes.
                with subprocess.Popen([pigz, "-c", "-6"], stdin=subprocess.PIPE, stdout=out) as proc:
                    assert proc.stdin is not None
                    try:
                        _write_tar(proc.stdin, model_dir, Path(code_dir), name, keep_all)
                    finally:
                        proc.stdin.close()
                if proc.returncode != 0:
                    raise PackagingError(f"pigz failed with exit code {proc.returncode}: retry without pigz on PATH")
            else:
                with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as gz:
                    _write_tar(gz, model_dir, Path(code_dir), name, keep_all)
        os.replace(partial, output)  # never leave a truncated model.tar.gz under the final name
    finally:
        partial.unlink(missing_ok=True)
    return output


def stack_outputs(cloudformation: Any, stack_name: str) -> dict[str, str]:
    """The deployed stack's outputs as {OutputKey: OutputValue}, from a boto3 CloudFormation client."""
    from botocore.exceptions import ClientError

    try:
        response = cloudformation.describe_stacks(StackName=stack_name)
    except ClientError as error:
        message = error.response.get("Error", {}).get("Message", str(error))
        if "does not exist" in message:
            raise PackagingError(
                f"stack {stack_name} does not exist in this account/region: deploy it first (make deploy-infra) "
                "or pass --stack-name/--region"
            ) from None
        raise PackagingError(f"cannot read stack {stack_name}: {message}") from None
    stacks = response.get("Stacks") or []
    if not stacks:
        raise PackagingError(f"stack {stack_name} was not found: deploy it first (make deploy-infra)")
    return {item["OutputKey"]: item["OutputValue"] for item in stacks[0].get("Outputs") or []}


def upload_target(cloudformation: Any, stack_name: str = DEFAULT_STACK) -> UploadTarget:
    """Bucket and key for model.tar.gz, from the stack outputs ModelBucketName and ModelDataKey."""
    outputs = stack_outputs(cloudformation, stack_name)
    missing = [key for key in (BUCKET_OUTPUT, KEY_OUTPUT) if not outputs.get(key)]
    if missing:
        raise PackagingError(
            f"stack {stack_name} has no output(s) {', '.join(missing)}: "
            "redeploy it with this version of the app (make deploy-infra)"
        )
    return UploadTarget(bucket=outputs[BUCKET_OUTPUT], key=outputs[KEY_OUTPUT])


class _Progress:
    """Prints upload progress every 10% (boto3 calls it from several threads)."""

    def __init__(self, total: int) -> None:
        self._total = max(total, 1)
        self._sent = 0
        self._shown = -1
        self._lock = threading.Lock()

    def __call__(self, sent: int) -> None:
        with self._lock:
            self._sent += sent
            step = self._sent * 10 // self._total
            if step > self._shown:
                self._shown = step
                print(f"  uploaded {self._sent / MiB:,.0f} of {self._total / MiB:,.0f} MiB", file=sys.stderr)


def upload_archive(s3: Any, archive: Path, target: UploadTarget, *, part_size: int = 64 * MiB) -> str:
    """Upload with boto3's managed transfer (multipart above `part_size`, parallel parts); return the s3:// URI."""
    from boto3.s3.transfer import TransferConfig

    # 64 MiB parts: a 5 GB model is ~80 parts (the limit is 10,000) and each retry resends little.
    config = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size, max_concurrency=8)
    archive = Path(archive)
    s3.upload_file(str(archive), target.bucket, target.key, Config=config, Callback=_Progress(archive.stat().st_size))
    return target.uri


def _session(region: str | None) -> Any:
    import boto3

    # botocore reads AWS_DEFAULT_REGION and the profile; the CDK app and Lambda use AWS_REGION too.
    session = boto3.session.Session(region_name=region or os.environ.get("AWS_REGION") or None)
    if session.region_name is None:
        raise PackagingError("no AWS region is set: pass --region or set AWS_REGION")
    if session.get_credentials() is None:
        raise PackagingError("no AWS credentials found: run 'aws configure' or set AWS_PROFILE, then retry")
    return session


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sd_tools.package_model", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="diffusers Stable Diffusion v1.x folder")
    parser.add_argument("--output", type=Path, default=Path("model.tar.gz"), help="archive to write (model.tar.gz)")
    parser.add_argument("--upload", action="store_true", help="upload to the bucket/key in the stack outputs")
    parser.add_argument("--stack-name", default=DEFAULT_STACK, help=f"stack with the outputs (default {DEFAULT_STACK})")
    parser.add_argument("--region", default=None, help="AWS region of the stack (default: AWS_REGION / profile)")
    parser.add_argument("--model-name", default=None, help="name reported by the endpoint (default: folder name)")
    parser.add_argument("--keep-all", action="store_true", help="also ship fp16/ema/flax/onnx and duplicate .bin files")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit code 2 with a one-line message for anything the user must fix."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    args = _parser().parse_args(argv)
    try:
        validate_model_dir(args.model_dir)
        # Look the target up before the long compression: a missing stack fails in a second.
        session = _session(args.region) if args.upload else None
        target = upload_target(session.client("cloudformation"), args.stack_name) if session else None
        print(f"packaging {args.model_dir} -> {args.output}", file=sys.stderr)
        archive = build_archive(args.model_dir, args.output, model_name=args.model_name, keep_all=args.keep_all)
        print(f"wrote {archive} ({archive.stat().st_size / MiB:,.1f} MiB)", file=sys.stderr)
        if session is not None and target is not None:
            print(f"uploading to {target.uri}", file=sys.stderr)
            print(upload_archive(session.client("s3"), archive, target))
        else:
            print(archive)
    except PackagingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except NoCredentialsError:
        print("error: no AWS credentials found: run 'aws configure' or set AWS_PROFILE, then retry", file=sys.stderr)
        return 2
    except ClientError as error:
        message = error.response.get("Error", {}).get("Message", str(error))
        print(f"error: AWS refused the request ({message}): check your credentials and the bucket", file=sys.stderr)
        return 2
    except S3UploadFailedError as error:
        print(f"error: upload failed ({error}): check your credentials and network, then retry", file=sys.stderr)
        return 2
    except BotoCoreError as error:
        print(f"error: {error}: check your AWS configuration (credentials, region, network)", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {error}: check the paths and free disk space", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
