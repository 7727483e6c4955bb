"""Does the generated data help a classifier? The few-shot evaluation behind ``skuforge evaluate``."""

import argparse
from typing import Literal

from shared.argtypes import float_between, int_between, non_negative_int

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


def add_curve_max_option(parser: argparse.ArgumentParser) -> None:
    """``--curve-max N`` (``EvaluationConfig.curve_max``), as ``skuforge evaluate`` and bench/augment.py
    take it: the curve is the report's, not the classifier's, so it is no classifier option."""
    parser.add_argument(
        "--curve-max",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="top-1 against real photos per SKU up to N of them (default: up to the most a scored SKU "
        "has; the report and evaluation JSON say where N cut it); each point fits two more classifiers "
        "(fine-tunes two, with --tune-stages), 20 beside the 5 conditions' at 10 photos per SKU; 0 or 1: "
        "no curve",
    )
