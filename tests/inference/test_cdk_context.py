"""`make upload-model` points cdk.json's modelDataKey at the uploaded archive without reformatting the file."""

import json

import boto3
import pytest
from moto import mock_aws

from sd_tools import package_model
from sd_tools.cdk_context import ContextFileError, set_context_value
from sd_tools.package_model import content_key
from tests.inference.test_package_model import STACK_TEMPLATE

CDK_JSON = """{
  "app": ".venv/bin/python infra/app.py",
  "context": {
    "instanceType": "ml.g4dn.xlarge",
    "modelDataKey": "models/stable-diffusion-v1-4/model.tar.gz",
    "mediaFormats": ["mp3", "wav"],
    "removal": "destroy"
  }
}
"""


def test_only_the_value_changes(tmp_path):
    path = tmp_path / "cdk.json"
    path.write_text(CDK_JSON)
    assert set_context_value(path, "modelDataKey", "models/sdxl-0123456789abcdef/model.tar.gz") is True
    expected = CDK_JSON.replace("stable-diffusion-v1-4", "sdxl-0123456789abcdef")
    assert path.read_text() == expected  # the one-line list and the key order stay the user's
    assert set_context_value(path, "modelDataKey", "models/sdxl-0123456789abcdef/model.tar.gz") is False


@pytest.mark.parametrize(
    "text",
    [
        '{"context": {"instanceType": "ml.g4dn.xlarge"}}',  # no entry to update
        '{"modelDataKey": "a", "context": {"modelDataKey": "b"}}',  # two: which one is meant is unclear
        '{"modelDataKey": "a", "context": {}}',  # outside context: the app would never read it
    ],
)
def test_an_entry_that_is_missing_twice_or_outside_context_is_refused_and_the_file_kept(tmp_path, text):
    path = tmp_path / "cdk.json"
    path.write_text(text)
    with pytest.raises(ContextFileError, match="modelDataKey"):
        set_context_value(path, "modelDataKey", "models/x/model.tar.gz")
    assert path.read_text() == text


def test_upload_records_the_content_hash_key_in_cdk_json(aws_env, tiny_model_dir, tmp_path, capsys):
    cdk_json = tmp_path / "cdk.json"
    cdk_json.write_text(CDK_JSON)
    output = tmp_path / "model.tar.gz"
    argv = ["--model-dir", str(tiny_model_dir), "--output", str(output), "--upload", "--record-in", str(cdk_json)]
    with mock_aws():
        cloudformation = boto3.client("cloudformation", region_name="us-east-1")
        cloudformation.create_stack(StackName="InfraStack", TemplateBody=json.dumps(STACK_TEMPLATE))
        assert package_model.main(argv) == 0
    key = content_key(output, "sd1")
    assert json.loads(cdk_json.read_text())["context"]["modelDataKey"] == key
    assert f"modelDataKey now points to {key}; next: make deploy-endpoint" in capsys.readouterr().err
