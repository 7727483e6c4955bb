"""What review 47 left in the contract's text: a length refusal says characters, not items."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from schemas import envelope, events
from schemas.common import Contract

# -- a text over its length is refused in characters ---------------------------------------------------


def _contracts() -> list[type[Contract]]:
    """Every contract model (the events', the envelope's and the value types they embed)."""
    assert envelope and events  # imported for their models
    found: list[type[Contract]] = []
    waiting = list(Contract.__subclasses__())
    while waiting:
        model = waiting.pop()
        if model not in found and "[" not in model.__name__:  # not Envelope[SkuIngested] and the like
            found.append(model)
            waiting.extend(model.__subclasses__())
    return found


def _max_length(schema: dict[str, Any]) -> tuple[int, bool] | None:
    """A property's string length bound, and whether it is a list's items' (None: not bounded text)."""
    for option in schema.get("anyOf", [schema]):
        if option.get("type") == "string" and "maxLength" in option:
            return option["maxLength"], False
        items = option.get("items", {})
        if items.get("type") == "string" and "maxLength" in items:
            return items["maxLength"], True
    return None


_BOUNDED_TEXT = [
    (model, name, bound)
    for model in _contracts()
    for name, schema in model.model_json_schema()["properties"].items()
    if (bound := _max_length(schema)) is not None
]


def test_every_bounded_text_of_the_contract_is_found() -> None:
    named = {f"{model.__name__}.{name}" for model, name, _ in _BOUNDED_TEXT}
    assert {"GateCheck.code", "CorrectionPending.reasons", "CorrectionResolved.reject_reason"} <= named


@pytest.mark.parametrize(
    ("model", "name", "bound"), _BOUNDED_TEXT, ids=[f"{m.__name__}.{n}" for m, n, _ in _BOUNDED_TEXT]
)
def test_a_text_over_its_length_is_refused_in_characters(
    model: type[Contract], name: str, bound: tuple[int, bool]
) -> None:
    # A length given after a text type's character rule (a check's code, a reason, an optional reject
    # reason) was pydantic's generic one: "Value should have at most 200 items after validation", read in a
    # dead letter's detail and a producer's error as a list's.
    limit, in_a_list = bound
    text = "x" * (limit + 1)
    with pytest.raises(ValidationError) as refused:
        model.model_validate({name: [text] if in_a_list else text})
    said = [error["msg"] for error in refused.value.errors() if error["loc"][:1] == (name,)]
    assert said and all("characters" in message and "items" not in message for message in said), said
