"""README's "Step by step, without `skuforge up`" block runs the whole flow, not its first stage."""

from __future__ import annotations

import re

from schemas.flow import PIPELINE
from tests.support.docs import README


def step_by_step_commands() -> list[str]:
    """The skuforge commands of the block, in order ("run captioner", "serve generator", ...)."""
    after = README.split("Step by step, without `skuforge up`", 1)[1]
    block = after.split("```bash", 1)[1].split("```", 1)[0]
    return re.findall(r"skuforge ((?:run|serve) [a-z-]+)", block)


def test_the_step_by_step_block_starts_every_stage_of_the_flow_and_triton_before_the_generator() -> None:
    # It started `run captioner` alone: nothing got past sku.captioned, and nothing said so.
    commands = step_by_step_commands()
    for stage in PIPELINE:
        assert f"run {stage.name}" in commands, f"README's step by step does not start {stage.name}"
    assert commands.index("serve generator") < commands.index("run generator")
    assert "serve console" in commands  # what the gate flags waits there for people
