"""Does the generated data help a classifier? The few-shot evaluation behind ``skuforge evaluate``."""

from typing import Literal

BackboneName = Literal["efficientnet-lite0", "tiny"]
# The backbones ``backbone.open_backbone`` builds, named here, without torch, for command-line parsers.
BACKBONES: tuple[BackboneName, ...] = ("efficientnet-lite0", "tiny")
