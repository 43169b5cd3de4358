"""What ``--invoker sam-local`` assumes of SAM CLI internals, checked against the installed
SAM CLI (.venv-sam), so an upgrade that changes them fails here, loudly, instead of making
every invoke download layers (needs credentials), rebuild its image (10+ s each) or drop the
emulator endpoint (the handlers then try real AWS):

- the layer cache: an ARN layer is looked up as ``<cache>/<name>-<version>-<sha256(arn)[:10]>``
  and, when there, used without any call to Lambda;
- the image: named ``samcli/lambda-python:3.13-<arch>-<sha256 of the layer names>[:25]`` and
  reused while it exists, unless a layer is defined in the template;
- ``--env-vars``: only declared variables reach the function; an unresolvable ``Fn::If`` value
  is blank, and the env-vars value replaces it.
"""

from __future__ import annotations

import json
import subprocess

from sam_template import need_sam

from totes_tools.local.sam_local import LayerStore, invoke_image, layer_cache_name, local_layer_arn

PROBE = r"""
import json, sys
from unittest import mock
from samcli.lib.providers.provider import LayerVersion
from samcli.local.docker.lambda_image import LambdaImage
from samcli.local.layers.layer_downloader import LayerDownloader
from samcli.local.lambdafn.env_vars import EnvironmentVariables

data = json.load(sys.stdin)
out = {}

class NoLambda:
    def __getattr__(self, name):
        raise AssertionError(f"SAM CLI called Lambda ({name}) for a cached layer")

arn_layers = [LayerVersion(arn, None) for arn in data["arns"]]
out["names"] = [layer.name for layer in arn_layers]
out["defined_within_template"] = [layer.is_defined_within_template for layer in arn_layers]
downloader = LayerDownloader(data["cache"], data["cache"], [], lambda_client=NoLambda())
out["codeuris"] = [downloader.download(layer).codeuri for layer in arn_layers]

docker = mock.Mock()  # images.get() finds every image
image = LambdaImage(downloader, skip_pull_image=True, force_image_build=False, docker_client=docker)
with mock.patch.object(LambdaImage, "_check_base_image_is_current"):
    with mock.patch.object(LambdaImage, "_build_image") as build:
        arn_layers = [LayerVersion(arn, None) for arn in data["arns"]]
        out["tag"] = image.build("python3.13", "Zip", None, arn_layers, data["arch"])
        out["rebuilt_with_arn_layers"] = build.called
    with mock.patch.object(LambdaImage, "_build_image") as build:
        template_layer = LayerVersion("TotesLayer", data["cache"])
        image.build("python3.13", "Zip", None, [template_layer], data["arch"])
        out["rebuilt_with_a_template_layer"] = build.called

unresolved = {
    "Fn::If": ["HasLocalEndpointUrl", {"Ref": "LocalEndpointUrl"}, {"Ref": "AWS::NoValue"}]
}
creds = {"key": "testing", "secret": "testing", "region": "eu-west-2"}
def resolve(overrides):
    env = EnvironmentVariables(
        "IngestFunction", 1769, 900, "app.handler",
        variables={"AWS_ENDPOINT_URL": unresolved, "RAW_BUCKET": "from-template"},
        shell_env_values={}, override_values=overrides, aws_creds=creds,
    ).resolve()
    keys = ("AWS_ENDPOINT_URL", "RAW_BUCKET", "NOT_DECLARED", "AWS_ACCESS_KEY_ID",
            "AWS_SESSION_TOKEN")
    return {k: env.get(k) for k in keys}
out["env_with_values"] = resolve(
    {"AWS_ENDPOINT_URL": "http://172.17.0.1:4566", "RAW_BUCKET": "raw", "NOT_DECLARED": "x"}
)
out["env_without_values"] = resolve({})
print(json.dumps(out))
"""


def test_sam_clis_layer_cache_image_reuse_and_env_vars_rules_are_what_the_invoker_assumes(
    tmp_path,
):
    sam = need_sam()
    store = LayerStore(tmp_path, "x86_64")
    arns = []
    for kind in ("pandas", "powertools", "totes"):
        name = f"{kind}-0123456789ab"
        (store.layers / name / "python").mkdir(parents=True)
        arns.append(store._seed(name))
    assert arns == [
        local_layer_arn(f"totes-local-{k}-0123456789ab") for k in ("pandas", "powertools", "totes")
    ]
    result = subprocess.run(
        [str(sam.parent / "python"), "-c", PROBE],
        input=json.dumps({"arns": arns, "cache": str(store.cache), "arch": "x86_64"}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)

    # The cache names, and the seeded directories used as they are (no download)
    assert seen["names"] == [layer_cache_name(arn) for arn in arns]
    assert seen["defined_within_template"] == [False, False, False]
    assert seen["codeuris"] == [str(store.cache.resolve() / layer_cache_name(a)) for a in arns]
    # The image name, and its reuse while only ARN layers are used
    assert seen["tag"] == invoke_image("x86_64", arns)
    assert seen["rebuilt_with_arn_layers"] is False
    assert seen["rebuilt_with_a_template_layer"] is True
    # --env-vars: declared variables take its values, undeclared ones are dropped; without a
    # value the unresolved If is blank (which botocore treats as unset: real AWS)
    assert seen["env_with_values"] == {
        "AWS_ENDPOINT_URL": "http://172.17.0.1:4566",
        "RAW_BUCKET": "raw",
        "NOT_DECLARED": None,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SESSION_TOKEN": None,
    }
    assert seen["env_without_values"]["AWS_ENDPOINT_URL"] == ""
    assert seen["env_without_values"]["RAW_BUCKET"] == "from-template"
