"""Review 47 of the gate: edge values of the checks, and what their messages tell a reviewer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.errors import BadInput
from shared.gate.checks import MAX_DECLARED_GAIN, ColourStats, GateThresholds, drift_check
from shared.store import FileStore
from tests.support.gate import matted_item, run_gate

STATS = ColourStats(mean_lab=(50.0, 0.0, 0.0), std_lab=(10.0, 5.0, 5.0), pixels=1000)


@pytest.mark.parametrize(
    "gain",
    [MAX_DECLARED_GAIN + 0.004, 1 / MAX_DECLARED_GAIN - 0.0001, 0.001, 1e-300],
    ids=["above", "below", "tiny", "vanishing"],
)
def test_a_refused_colour_gain_is_shown_beyond_the_bound_it_breaks(gain: float) -> None:
    """A declared gain just past x2 (2.004) or just under x0.5 (0.4999), or a vanishing one (0.001), read
    "a colour gain of (2.00, ...)", "(0.50, ...)" or "(0.00, ...)" "beyond x2 either way": the figure a
    reviewer saw was within the bound, or no gain at all. Each is shown at as many decimals as tell it
    from the bound."""
    check = drift_check(
        product=STATS, reference=STATS, thresholds=GateThresholds(), colour_gain=(1.0, gain, 1.0)
    )
    assert not check.passed
    shown = re.search(r"colour gain of \(([^)]*)\)", check.message)
    assert shown is not None, check.message
    figure = float(shown.group(1).split(", ")[1])
    assert not 1 / MAX_DECLARED_GAIN <= figure <= MAX_DECLARED_GAIN, check.message
    assert figure > 0, check.message


@pytest.mark.parametrize(
    ("field", "beside"),
    [("image", ("predicted_mask", "expected_mask")), ("reference_image", ("reference_mask",))],
)
def test_sizes_that_differ_name_each_object_s_uri(
    tmp_path: Path, field: str, beside: tuple[str, ...]
) -> None:
    """docs/gate-and-trainstore.md: a dimension_mismatch letter's detail "names the object refused ...
    and its uri". Masks stated at another size than their image named the objects alone ("image
    96x48 (HxW), predicted mask 96x96 (HxW)"), and which uris were at odds was left to the reader."""
    store = FileStore(tmp_path / "store")
    matted = matted_item(store, 1, 0)
    generated = matted.generated
    image = getattr(generated, field).model_copy(update={"width": 48})
    matted = matted.model_copy(update={"generated": generated.model_copy(update={field: image})})
    with pytest.raises(BadInput) as refused:
        run_gate(store, matted)
    assert refused.value.reason == "dimension_mismatch"
    objects = {"predicted_mask": matted.predicted_mask, **dict(matted.generated)}
    for name in (field, *beside):
        assert objects[name].uri in refused.value.detail, (name, refused.value.detail)
