"""Does the generated data help a classifier? The few-shot evaluation behind ``skuforge evaluate``."""

from typing import Literal

from shared.argtypes import float_between, int_between

# The files ``skuforge evaluate`` writes in its --out, both or neither (report.html is
# ``report.render_report``'s page; ``services/trainstore/evaluation.write_results`` writes them),
# named here, without torch, so the command checks them before a run.
EVALUATION_FILE = "evaluation.json"
REPORT_FILE = "report.html"

BackboneName = Literal["efficientnet-lite0", "tiny"]
# The backbones ``backbone.open_backbone`` builds, named here, without torch, for command-line parsers.
BACKBONES: tuple[BackboneName, ...] = ("efficientnet-lite0", "tiny")

# The classifier options' ranges, one rule for ``skuforge evaluate`` and bench/augment.py: argparse
# types, so that an ``--l2 inf`` or a negative ``--real-weight`` is refused before a run.
L2 = float_between(0.0, 1e6)
REAL_WEIGHT = float_between(1e-6, 1e6)
TUNE_LR = float_between(1e-9, 1.0)
# 0 epochs: the head alone is fitted on the tuned stages' features (a baseline for the tuning). The
# default is 8; 1000 leaves room for any experiment and refuses a typo (80000) that would run for days.
TUNE_EPOCHS = int_between(0, 1000)
