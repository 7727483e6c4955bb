"""``python -m services.matting.stage`` refused at start-up says it as ``skuforge run matting`` does: one
line naming the setting to fix, not a traceback (a developer runs the module; a pod runs the command)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _started(command: list[str], s3_endpoint: str, model: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SKUFORGE_S3_ENDPOINT_URL": s3_endpoint,
        "SKUFORGE_MATTING_MODEL": model,
        "SKUFORGE_METRICS_PORT": "0",
        "SKUFORGE_LOG_FORMAT": "text",
    }
    return subprocess.run(
        [sys.executable, "-m", *command],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_a_model_in_a_missing_bucket_is_one_line_naming_the_setting_as_skuforge_run_says_it(
    s3_endpoint: str,
) -> None:
    model = f"s3://no-such-bucket-{uuid.uuid4().hex[:12]}/u2netp.onnx"
    module = _started(["services.matting.stage"], s3_endpoint, model)
    command = _started(["skuforge_cli", "run", "matting"], s3_endpoint, model)
    assert "Traceback" not in module.stderr
    assert module.returncode == command.returncode == 1
    name = "python -m services.matting.stage: "
    said = [line for line in module.stderr.splitlines() if line.startswith(name)]
    assert len(said) == 1 and "NoSuchBucket" in said[0] and "SKUFORGE_MATTING_MODEL" in said[0]
    # The same words as the command's, after its own name.
    reason = said[0].removeprefix(name)
    assert f"skuforge run: {reason}" in command.stderr.splitlines()
