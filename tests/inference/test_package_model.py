"""sd_tools.package_model: folder validation, the model.tar.gz layout, loading it back, and the upload path."""

from __future__ import annotations

import datetime
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import boto3
import numpy as np
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from sd_tools import package_model
from sd_tools.package_model import (
    PackagingError,
    UploadTarget,
    build_archive,
    content_key,
    upload_archive,
    upload_bucket,
)
from sd_tools.toolkit_harness import ToolkitEndpoint
from tests.inference.helpers import generate, pixels

REPO = Path(__file__).resolve().parents[2]
WRAPPER = REPO / "stable-diffusion-custom-inference" / "upload-model.sh"
KEY = "models/stable-diffusion-v1-4/model.tar.gz"


def members(archive: Path) -> dict[str, bytes]:
    """Every regular file in the archive, by name."""
    with tarfile.open(archive, "r:gz") as tar:
        assert all(member.isfile() for member in tar.getmembers())
        return {member.name: tar.extractfile(member).read() for member in tar.getmembers()}


@pytest.fixture(scope="module")
def archive(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_archive(tiny_model_dir, tmp_path_factory.mktemp("archive") / "model.tar.gz", use_pigz=False)


def test_archive_has_the_toolkit_layout(archive, tiny_model_dir):
    files = members(archive)
    model_files = sorted(p.relative_to(tiny_model_dir).as_posix() for p in tiny_model_dir.rglob("*") if p.is_file())
    assert sorted(name for name in files if not name.startswith("code/")) == model_files
    source = REPO / "stable-diffusion-custom-inference" / "code"
    shipped = {f"code/{path.name}" for path in source.glob("*.py")} | {"code/requirements.txt"}
    assert {"code/inference.py", "code/sd_families.py", "code/sd_budget.py"} <= shipped
    assert {name for name in files if name.startswith("code/")} == shipped | {"code/model_info.json"}
    for name in shipped:
        assert files[name] == (source / name.removeprefix("code/")).read_bytes()
    assert files["code/requirements.txt"] == (source / "requirements.txt").read_bytes()
    assert json.loads(files["code/model_info.json"]) == {"name": "tiny-sd"}
    assert (
        files["unet/diffusion_pytorch_model.safetensors"]
        == (tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    )


def test_extracted_archive_serves_the_same_images(archive, endpoint, tmp_path):
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(tmp_path / "opt-ml-model", filter="data")
    with ToolkitEndpoint(tmp_path / "opt-ml-model") as packaged:
        assert packaged.serving_dir == (tmp_path / "opt-ml-model").resolve()  # its own code/ is used as is
        response = generate(packaged, seed=7)
    assert response["model"] == {"name": "tiny-sd", "family": "sd1"}
    assert np.abs(pixels(response) - pixels(generate(endpoint, seed=7))).max() <= 1


@pytest.mark.skipif(shutil.which("pigz") is None, reason="pigz is not installed")
def test_pigz_and_python_gzip_archives_hold_the_same_files(archive, tiny_model_dir, tmp_path):
    with_pigz = build_archive(tiny_model_dir, tmp_path / "pigz.tar.gz", use_pigz=True)
    assert members(with_pigz) == members(archive)


def test_unused_weights_hidden_files_and_old_code_are_left_out(tiny_model_dir, tmp_path):
    model = tmp_path / "sd"
    shutil.copytree(tiny_model_dir, model)
    extras = {
        "unet/diffusion_pytorch_model.bin": True,  # twin of the .safetensors
        "text_encoder/pytorch_model.bin": True,  # transformers' twin of model.safetensors
        "unet/diffusion_pytorch_model.fp16.safetensors": True,
        "vae/diffusion_flax_model.msgpack": True,
        ".git/HEAD": False,
        ".gitattributes": False,
        ".cache/huggingface/download/x.lock": False,
        "README.md": None,  # kept
    }
    (model / "code").mkdir()
    (model / "code" / "inference.py").write_text("x")  # an old handler: ours replaces it
    for name in extras:
        (model / name).parent.mkdir(parents=True, exist_ok=True)
        (model / name).write_text("x")
    slim = members(build_archive(model, tmp_path / "slim.tar.gz", use_pigz=False))
    full = members(build_archive(model, tmp_path / "full.tar.gz", use_pigz=False, keep_all=True))
    for name, unused_weight in extras.items():
        if unused_weight is None:
            assert name in slim and name in full
        elif unused_weight:
            assert name not in slim and name in full
        else:
            assert name not in slim and name not in full
    assert slim["code/inference.py"] != b"x"


def test_symlinked_files_and_folders_are_archived_as_their_content(tiny_model_dir, tmp_path):
    # Hugging Face cache snapshots are folders of links to blobs.
    linked = tmp_path / "snapshot"
    linked.mkdir()
    for entry in tiny_model_dir.iterdir():
        (linked / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    files = members(build_archive(linked, tmp_path / "linked.tar.gz", use_pigz=False))
    assert (
        files["vae/diffusion_pytorch_model.safetensors"]
        == (tiny_model_dir / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    )


def _index(folder: Path, **index: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.mark.parametrize(
    ("make", "fix"),
    [
        (lambda root: root / "absent", "is not a folder"),
        (lambda root: root, "has no model_index.json"),
        (
            lambda root: _index(root / "sd3", _class_name="StableDiffusion3Pipeline"),
            "'StableDiffusion3Pipeline', which",
        ),
        (lambda root: _index(root / "sd", _class_name="StableDiffusionPipeline"), "lists no unet, vae"),
    ],
    ids=["missing", "no-index", "other-pipeline", "no-subfolders"],
)
def test_a_folder_that_is_not_sd_is_refused_with_exit_2_and_one_line(tmp_path, capsys, make, fix):
    folder = make(tmp_path)
    with pytest.raises(PackagingError, match="diffusers text-to-image folder"):
        package_model.validate_model_dir(folder)
    assert package_model.main(["--model-dir", str(folder), "--output", str(tmp_path / "m.tar.gz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and fix in err
    assert "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "m.tar.gz").exists()


def test_upload_bucket_comes_from_the_stack_outputs():
    client = boto3.client("cloudformation", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    stack = {
        "StackName": "InfraStack",
        "CreationTime": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        "StackStatus": "CREATE_COMPLETE",
        "Outputs": [
            {"OutputKey": "ModelBucketName", "OutputValue": "infra-modelbucket-abc"},
            {"OutputKey": "ModelDataKey", "OutputValue": KEY},
        ],
    }
    with Stubber(client) as stub:
        stub.add_response("describe_stacks", {"Stacks": [stack]}, {"StackName": "InfraStack"})
        stub.add_response(
            "describe_stacks", {"Stacks": [{**stack, "Outputs": stack["Outputs"][1:]}]}, {"StackName": "Old"}
        )
        stub.add_client_error(
            "describe_stacks",
            service_error_code="ValidationError",
            service_message="Stack with id Gone does not exist",
            http_status_code=400,
            expected_params={"StackName": "Gone"},
        )
        assert upload_bucket(client, "InfraStack") == "infra-modelbucket-abc"
        with pytest.raises(PackagingError, match=r"has no output ModelBucketName"):
            upload_bucket(client, "Old")
        with pytest.raises(PackagingError, match=r"does not exist.*deploy"):
            upload_bucket(client, "Gone")


def test_upload_is_multipart_capable(aws_env, tmp_path):
    big = tmp_path / "model.tar.gz"
    big.write_bytes(np.random.default_rng(0).bytes(11 * 1024 * 1024))
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="models")
        uri = upload_archive(s3, big, UploadTarget("models", KEY), part_size=5 * 1024 * 1024)
        head = s3.head_object(Bucket="models", Key=KEY)
        body = s3.get_object(Bucket="models", Key=KEY)["Body"].read()
    assert uri == f"s3://models/{KEY}"
    assert head["ETag"].strip('"').endswith("-3")  # three 5 MiB-or-less parts
    assert hashlib.sha256(body).digest() == hashlib.sha256(big.read_bytes()).digest()


STACK_TEMPLATE = {
    "Resources": {"ModelBucket": {"Type": "AWS::S3::Bucket"}},
    "Outputs": {"ModelBucketName": {"Value": {"Ref": "ModelBucket"}}, "ModelDataKey": {"Value": KEY}},
}


def test_cli_uploads_under_a_content_hash_key_and_prints_the_deploy_change(aws_env, tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "model.tar.gz"
    argv = ["--model-dir", str(tiny_model_dir), "--output", str(output), "--upload"]
    with mock_aws():
        cloudformation = boto3.client("cloudformation", region_name="us-east-1")
        cloudformation.create_stack(StackName="InfraStack", TemplateBody=json.dumps(STACK_TEMPLATE))
        bucket = upload_bucket(cloudformation, "InfraStack")
        code = package_model.main(argv)
        first = capsys.readouterr()
        s3 = boto3.client("s3", region_name="us-east-1")
        key = content_key(output, "sd1")
        uploaded = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        again = package_model.main(argv)  # same folder, same bytes, same key: nothing to upload
        second = capsys.readouterr()
        missing = package_model.main([*argv, "--stack-name", "Nope"])
    assert code == 0 and again == 0
    digest = hashlib.sha256(output.read_bytes()).hexdigest()
    assert key == f"models/sd1-{digest[:16]}/model.tar.gz"
    assert first.out.strip() == second.out.strip() == f"s3://{bucket}/{key}"
    assert uploaded == output.read_bytes()
    assert f"-c modelDataKey={key}" in first.err and f'"modelDataKey": "{key}"' in first.err
    assert "already holds this archive" in second.err
    assert missing == 2
    assert "stack Nope does not exist" in capsys.readouterr().err


def test_cli_without_credentials_exits_2_before_packaging(tiny_model_dir, tmp_path, monkeypatch, capsys):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    code = package_model.main(["--model-dir", str(tiny_model_dir), "--output", str(tmp_path / "m.tar.gz"), "--upload"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: no AWS credentials found: run 'aws configure' or set AWS_PROFILE, then retry"
    assert not (tmp_path / "m.tar.gz").exists()


@pytest.mark.skipif(not (REPO / ".venv" / "bin" / "python").exists(), reason="the wrapper runs the repo's .venv")
def test_upload_model_sh_wraps_the_cli(tiny_model_dir, tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(WRAPPER), *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)

    usage = run()
    assert usage.returncode == 2 and "usage:" in usage.stderr
    refused = run(str(tmp_path))
    assert refused.returncode == 2
    assert "has no model_index.json" in refused.stderr and "Traceback" not in refused.stderr
    built = run(str(tiny_model_dir), "--output", "out/model.tar.gz", "--no-upload")
    assert built.returncode == 0, built.stderr
    assert "code/inference.py" in members(tmp_path / "out" / "model.tar.gz")


def test_output_inside_the_model_folder_is_refused(tiny_model_dir):
    with pytest.raises(PackagingError, match="inside the model folder"):
        build_archive(tiny_model_dir, tiny_model_dir / "model.tar.gz")
    assert not (tiny_model_dir / "model.tar.gz").exists()
    assert sys.modules.get("inference") is None


def test_a_folder_with_only_fp16_weights_is_refused(tmp_path, tiny_model_dir):
    folder = tmp_path / "fp16-only"
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("code"))
    for weights in (folder / "unet").glob("diffusion_pytorch_model.*"):
        weights.rename(weights.with_name(weights.name.replace("model.", "model.fp16.")))
    with pytest.raises(PackagingError, match=r"no weights in unet \(neither a full set of fp16 variant files"):
        package_model.validate_model_dir(folder)


def test_a_folder_without_safety_checker_is_packaged_with_a_warning(tmp_path, tiny_model_dir, capsys):
    folder = tmp_path / "unchecked"
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("code", "safety_checker"))
    package_model.validate_model_dir(folder)
    assert "no safety_checker/" in capsys.readouterr().err


def test_an_sdxl_folder_with_fp16_variants_is_packed_with_only_the_fp16_weights(family_dirs, tmp_path):
    folder = family_dirs["sdxl"]
    files = members(build_archive(folder, tmp_path / "sdxl.tar.gz", use_pigz=False))
    weights = sorted(name for name in files if name.endswith(".safetensors"))
    assert weights == [
        "text_encoder/model.fp16.safetensors",
        "text_encoder_2/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ]
    full = sum((folder / name.replace(".fp16", "")).stat().st_size for name in weights)
    assert sum(len(files[name]) for name in weights) < 0.6 * full  # half the bytes


def test_family_flag_marks_a_turbo_folder_and_the_key_names_the_family(family_dirs, tmp_path, capsys):
    folder = tmp_path / "sdxl-turbo-download"
    shutil.copytree(family_dirs["sdxl-turbo"], folder, ignore=shutil.ignore_patterns("speech_to_image.json"))
    output = tmp_path / "turbo.tar.gz"
    assert package_model.main(["--model-dir", str(folder), "--family", "sdxl-turbo", "--output", str(output)]) == 0
    err = capsys.readouterr().err
    assert json.loads(members(output)["speech_to_image.json"]) == {"family": "sdxl-turbo"}
    assert f"-c modelDataKey={content_key(output, 'sdxl-turbo')}" in err
    assert content_key(output, "sdxl-turbo").startswith("models/sdxl-turbo-")
    assert package_model.main(["--model-dir", str(folder), "--family", "sd-turbo", "--output", str(output)]) == 2
    assert "is named sd-turbo" in capsys.readouterr().err


def test_code_only_archive_holds_only_code_and_is_byte_for_byte_repeatable(tmp_path, capsys):
    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    assert package_model.main(["--code-only", "--output", str(first)]) == 0
    assert package_model.main(["--code-only", "--output", str(second)]) == 0
    assert first.read_bytes() == second.read_bytes()  # same code, same key: no needless new SageMaker model
    assert all(name.startswith("code/") for name in members(first))
    assert "code/model_info.json" not in members(first)  # the endpoint reports the Hub id
    assert f"modelDataKey={content_key(first, 'code')}" in capsys.readouterr().err
