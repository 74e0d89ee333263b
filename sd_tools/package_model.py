"""Package a diffusers text-to-image folder as the endpoint's model.tar.gz and optionally upload it.

    python -m sd_tools.package_model --model-dir stable-diffusion-xl-base-1.0 [--family sdxl-turbo]
        [--output model.tar.gz] [--upload] [--stack-name InfraStack] [--region eu-west-1]
    python -m sd_tools.package_model --code-only --upload      # hub mode: the weights come from the Hub

The archive has the toolkit layout SageMaker extracts into /opt/ml/model: the model files at the root and
code/ (inference.py, its sd_*.py modules, requirements.txt) beside them. Every family the endpoint serves is
accepted (code/sd_families.py decides, for both). When every weighted component has fp16 variant files only
those are packed (half the bytes). The archive is stored under a content-hash key,
`models/<family>-<first 16 hex of its sha256>/model.tar.gz`, so a new model is a new SageMaker model, never a
silent swap under a running endpoint; the command prints that key and the `-c modelDataKey=...` to deploy it.
`--upload` puts it in the deployed InfraStack's model bucket (its ModelBucketName output).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
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

from sd_tools.cdk_context import ContextFileError, set_context_value
from sd_tools.endpoint_code import CODE_DIR, standalone

REPO_ROOT = Path(__file__).resolve().parents[1]
BUCKET_OUTPUT = "ModelBucketName"
DEFAULT_STACK = "InfraStack"
# Weight files diffusers never reads when loading the default variant in PyTorch: other
# variants (fp16/ema/non_ema), Flax and ONNX exports. Shipping them only makes the archive
# (and the endpoint's download) bigger.
UNUSED_WEIGHTS = re.compile(r"(\.(ema|non_ema)\.(safetensors|bin)|\.msgpack|\.onnx|\.onnx_data|\.ckpt)$")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
KEY_PREFIX = "models"
HASH_CHARS = 16
MiB = 1024 * 1024


def families() -> Any:
    """code/sd_families.py, the endpoint's own family detection (one home for what a servable folder is)."""
    return standalone("sd_families")


def code_files(code_dir: Path) -> list[Path]:
    """inference.py, its sibling modules and requirements.txt: everything code/ ships."""
    return [*sorted(Path(code_dir).glob("*.py")), Path(code_dir) / "requirements.txt"]


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


def validate_model_dir(model_dir: Path, family: str | None = None) -> Any:
    """Check that the endpoint can serve `model_dir` (as `family` when given); return what it found."""
    found_families = families()
    try:
        found = found_families.detect_family(Path(model_dir), env_family=family)
    except found_families.ModelFolderError as error:
        raise PackagingError(str(error)) from None
    if not found.has_safety_checker:
        # Not an error: users may serve their own filtered model. Say it loudly, once, here.
        print(
            f"warning: {model_dir} has no safety_checker/: the endpoint will serve images unchecked "
            "(nsfw_content_detected: null)",
            file=sys.stderr,
        )
    return found


def iter_model_files(
    model_dir: Path, *, keep_all: bool = False, variant: str | None = None, skip: tuple[str, ...] = ()
) -> Iterator[tuple[Path, str]]:
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
            if name.startswith(".") or (top and name in skip) or (not keep_all and _unused(path, top, variant)):
                continue
            yield path, path.relative_to(model_dir).as_posix()


# transformers names its weights differently from diffusers: pytorch_model.bin <-> model.safetensors.
SAFETENSORS_TWIN = {"pytorch_model.bin": "model.safetensors"}


def _unused(path: Path, top: bool, variant: str | None) -> bool:
    if UNUSED_WEIGHTS.search(path.name):
        return True
    if top and path.suffix in WEIGHT_SUFFIXES:
        return True  # a single-file checkpoint beside the diffusers folders (e.g. sd_xl_base_1.0.safetensors)
    is_fp16 = ".fp16." in path.name
    if path.suffix in (".safetensors", ".bin") and is_fp16 != (variant == "fp16"):
        return True  # the endpoint loads one variant: fp16 when the folder has it throughout, else the default
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


def _write_tar(stream: BinaryIO, model_dir: Path | None, code_dir: Path, info: dict[str, Any], keep_all: bool) -> int:
    count = 0
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        if model_dir is not None:
            family_file = families().FAMILY_FILE
            variant = info.get("variant")
            # Our own family file replaces the folder's when --family names one.
            skip = (family_file,) if "family_override" in info else ()
            for path, name in iter_model_files(model_dir, keep_all=keep_all, variant=variant, skip=skip):
                size = path.stat().st_size  # stat() follows symlinks: the HF cache stores files as links to blobs
                with path.open("rb") as handle:
                    tar.addfile(_tar_info(name, size), handle)
                count += 1
            if "family_override" in info:
                marker = json.dumps({"family": info["family_override"]}).encode("utf-8")
                tar.addfile(_tar_info(family_file, len(marker)), io.BytesIO(marker))
        for source in code_files(code_dir):
            with source.open("rb") as handle:
                tar.addfile(_tar_info(f"code/{source.name}", source.stat().st_size), handle)
        if info.get("name"):
            named = json.dumps({"name": info["name"]}).encode("utf-8")
            tar.addfile(_tar_info("code/model_info.json", len(named)), io.BytesIO(named))
    return count


def build_archive(
    model_dir: Path | None,
    output: Path,
    *,
    code_dir: Path = CODE_DIR,
    model_name: str | None = None,
    family: str | None = None,
    keep_all: bool = False,
    use_pigz: bool | None = None,
) -> Path:
    """Write `output` (model.tar.gz) from `model_dir` (None: code only) plus `code_dir`; pigz when on PATH."""
    output = Path(output).resolve()
    info: dict[str, Any] = {"name": model_name}
    if model_dir is not None:
        model_dir = Path(model_dir).resolve()
        found = validate_model_dir(model_dir, family)
        info.update(name=model_name or model_dir.name, variant=found.variant)
        if family:
            info["family_override"] = found.family.name
        if output.is_relative_to(model_dir):
            raise PackagingError(f"--output {output} is inside the model folder: write the archive somewhere else")
    missing = [path.name for path in code_files(Path(code_dir)) if not path.is_file()]
    if missing or not (Path(code_dir) / "inference.py").is_file():
        raise PackagingError(f"{code_dir} lacks inference.py/requirements.txt: run from a full checkout")
    pigz = shutil.which("pigz") if use_pigz in (None, True) else None
    if use_pigz and pigz is None:
        raise PackagingError("pigz is not on PATH: install it (apt-get install pigz) or leave it out")
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    try:
        with partial.open("wb") as out:
            if pigz:
                # pigz compresses on every core: a 5 GB model takes minutes instead of tens of minutes.
                # -n: no name or mtime in the gzip header, so the same inputs give the same bytes (and key).
                with subprocess.Popen([pigz, "-c", "-6", "-n"], stdin=subprocess.PIPE, stdout=out) as proc:
                    assert proc.stdin is not None
                    try:
                        _write_tar(proc.stdin, model_dir, Path(code_dir), info, keep_all)
                    finally:
                        proc.stdin.close()
                if proc.returncode != 0:
                    raise PackagingError(f"pigz failed with exit code {proc.returncode}: retry without pigz on PATH")
            else:
                with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0, filename="") as gz:
                    _write_tar(gz, model_dir, Path(code_dir), info, keep_all)
        os.replace(partial, output)  # never leave a truncated model.tar.gz under the final name
    finally:
        partial.unlink(missing_ok=True)
    return output


def content_key(archive: Path, family: str) -> str:
    """`models/<family>-<first 16 hex of sha256(archive)>/model.tar.gz`: a new archive is a new key."""
    digest = hashlib.sha256()
    with Path(archive).open("rb") as handle:
        for block in iter(lambda: handle.read(8 * MiB), b""):
            digest.update(block)
    return f"{KEY_PREFIX}/{family}-{digest.hexdigest()[:HASH_CHARS]}/model.tar.gz"


def deploy_hint(key: str) -> str:
    """What the user changes to serve the archive stored under `key`."""
    return (
        f"to serve it, deploy with: npx cdk deploy --all -c modelDataKey={key}\n"
        f'or set "modelDataKey": "{key}" in cdk.json (context), then make deploy-endpoint'
    )


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


def upload_bucket(cloudformation: Any, stack_name: str = DEFAULT_STACK) -> str:
    """The model bucket, from the deployed stack's ModelBucketName output."""
    outputs = stack_outputs(cloudformation, stack_name)
    if not outputs.get(BUCKET_OUTPUT):
        raise PackagingError(
            f"stack {stack_name} has no output {BUCKET_OUTPUT}: "
            "redeploy it with this version of the app (make deploy-infra)"
        )
    return outputs[BUCKET_OUTPUT]


def already_uploaded(s3: Any, target: UploadTarget, size: int) -> bool:
    """True when `target` already holds an object of `size` bytes (content-hash keys: the same archive)."""
    from botocore.exceptions import ClientError

    try:
        return int(s3.head_object(Bucket=target.bucket, Key=target.key)["ContentLength"]) == size
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


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
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", type=Path, help="diffusers folder: SD 1.x, SD 2.x, SDXL or a turbo model")
    source.add_argument("--code-only", action="store_true", help="only code/ (hub mode: model_fn downloads weights)")
    parser.add_argument("--family", default=None, help="serve the folder as this family (sd-turbo, sdxl-turbo, ...)")
    parser.add_argument("--output", type=Path, default=Path("model.tar.gz"), help="archive to write (model.tar.gz)")
    parser.add_argument("--upload", action="store_true", help="upload to the stack's model bucket, content-hash key")
    parser.add_argument("--stack-name", default=DEFAULT_STACK, help=f"stack with the outputs (default {DEFAULT_STACK})")
    parser.add_argument(
        "--record-in", type=Path, default=None, help="after uploading, set context modelDataKey in this cdk.json"
    )
    parser.add_argument("--region", default=None, help="AWS region of the stack (default: AWS_REGION / profile)")
    parser.add_argument("--model-name", default=None, help="name reported by the endpoint (default: folder name)")
    parser.add_argument(
        "--keep-all", action="store_true", help="also ship other variants, ema/flax/onnx and .bin twins"
    )
    return parser


def _package(args: argparse.Namespace) -> int:
    found = None if args.code_only else validate_model_dir(args.model_dir, args.family)
    # Look the bucket up before the long compression: a missing stack fails in a second.
    session = _session(args.region) if args.upload else None
    bucket = upload_bucket(session.client("cloudformation"), args.stack_name) if session else None
    print(f"packaging {args.model_dir or 'code/ only'} -> {args.output}", file=sys.stderr)
    archive = build_archive(
        args.model_dir, args.output, model_name=args.model_name, family=args.family, keep_all=args.keep_all
    )
    print(f"wrote {archive} ({archive.stat().st_size / MiB:,.1f} MiB)", file=sys.stderr)
    key = content_key(archive, found.family.name if found else "code")
    if session is None or bucket is None:
        print(archive)
        print(f"upload it under the key {key} (--upload does), then {deploy_hint(key)}", file=sys.stderr)
        return 0
    target = UploadTarget(bucket, key)
    s3 = session.client("s3")
    if already_uploaded(s3, target, archive.stat().st_size):
        print(f"{target.uri} already holds this archive: not uploading it again", file=sys.stderr)
    else:
        print(f"uploading to {target.uri}", file=sys.stderr)
        upload_archive(s3, archive, target)
    print(target.uri)
    if args.record_in is not None:
        changed = set_context_value(args.record_in, "modelDataKey", key)
        state = "now points" if changed else "already pointed"
        print(f"{args.record_in}: modelDataKey {state} to {key}; next: make deploy-endpoint", file=sys.stderr)
    else:
        print(deploy_hint(key), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit code 2 with a one-line message for anything the user must fix."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    args = _parser().parse_args(argv)
    try:
        return _package(args)
    except (PackagingError, ContextFileError) as error:
        print(f"error: {error}", file=sys.stderr)
    except NoCredentialsError:
        print("error: no AWS credentials found: run 'aws configure' or set AWS_PROFILE, then retry", file=sys.stderr)
    except ClientError as error:
        message = error.response.get("Error", {}).get("Message", str(error))
        print(f"error: AWS refused the request ({message}): check your credentials and the bucket", file=sys.stderr)
    except S3UploadFailedError as error:
        print(f"error: upload failed ({error}): check your credentials and network, then retry", file=sys.stderr)
    except BotoCoreError as error:
        print(f"error: {error}: check your AWS configuration (credentials, region, network)", file=sys.stderr)
    except OSError as error:
        print(f"error: {error}: check the paths and free disk space", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
