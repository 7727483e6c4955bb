"""Generate the committed JSON Schemas (``schemas/json/``) from the pydantic models.

Run ``python -m schemas.jsonschema`` after changing a model; a test fails while the
committed files and the models disagree.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

from schemas.envelope import DeadLetter, Envelope
from schemas.events import PARAMETER_VALUE_DEF, PARAMETER_VALUE_MARK, PARAMETER_VALUE_SCHEMA
from schemas.topics import ALL_TOPICS

JSON_DIR = Path(__file__).parent / "json"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
# Refused beside every pattern: ECMA-262 (JSON Schema's dialect) and pydantic read "$" as the end of the text,
# Python's re (the jsonschema package's) also before a final newline, so "sku-1\n" passed there and was then
# dead-lettered. Neither "\Z" nor a lookahead is both ECMA-262 and RE2; a "not" reads alike in every dialect.
_TRAILING_NEWLINE = r"\n$"


def render_schemas() -> dict[str, str]:
    """File name → JSON text of every schema: one enveloped schema per topic, plus the DLQ record."""
    rendered: dict[str, Any] = {}
    for topic in ALL_TOPICS:
        schema = Envelope[topic.payload].model_json_schema()  # type: ignore[name-defined]
        schema["title"] = f"{topic.schema_name} v{topic.version}"
        # The model takes any name and version; the topic's consumers dead-letter every other one
        # (schema_mismatch, schema_version_unsupported), so the topic's schema says which it takes.
        schema["properties"]["schema_name"]["const"] = topic.schema_name
        schema["properties"]["schema_version"]["const"] = topic.version
        schema["x-topic"] = topic.name
        rendered[f"{topic.name}.json"] = schema
    dead_letter = DeadLetter.model_json_schema()
    dead_letter["x-topic"] = "<topic>.dlq"
    rendered["dlq.v1.json"] = dead_letter
    for schema in rendered.values():
        # pydantic writes draft 2020-12 (prefixItems bounds a colour gain's three channels); undeclared, a
        # validator that defaults to an older draft ignores those keywords and passes what a stage refuses.
        schema["$schema"] = JSON_SCHEMA_DIALECT
        if _refer_to_parameter_values(schema):
            schema.setdefault("$defs", {})[PARAMETER_VALUE_DEF] = copy.deepcopy(PARAMETER_VALUE_SCHEMA)
        _refuse_a_trailing_newline(schema)
    return {name: json.dumps(schema, indent=2, sort_keys=True) + "\n" for name, schema in rendered.items()}


def _refer_to_parameter_values(node: object) -> bool:
    """Replace each ``PARAMETER_VALUE_MARK`` under ``node`` by a reference to its definition; whether
    there was one (pydantic writes no reference to a definition it did not make)."""
    found = False
    if isinstance(node, list):
        for index, item in enumerate(node):
            if item == PARAMETER_VALUE_MARK:
                node[index], found = {"$ref": f"#/$defs/{PARAMETER_VALUE_DEF}"}, True
            else:
                found = _refer_to_parameter_values(item) or found
    elif isinstance(node, dict):
        for key, value in node.items():
            if value == PARAMETER_VALUE_MARK:
                node[key], found = {"$ref": f"#/$defs/{PARAMETER_VALUE_DEF}"}, True
            else:
                found = _refer_to_parameter_values(value) or found
    return found


def _refuse_a_trailing_newline(node: object) -> None:
    """Refuse a final newline wherever ``node`` (a schema or a part of one) has a pattern."""
    if isinstance(node, list):
        for item in node:
            _refuse_a_trailing_newline(item)
    elif isinstance(node, dict):
        for value in node.values():
            _refuse_a_trailing_newline(value)
        # A string: a model field named "pattern" is a dict here, a property's schema.
        if isinstance(node.get("pattern"), str):
            if "not" in node:
                raise ValueError(f"the trailing-newline check would replace this schema's own 'not': {node}")
            node["not"] = {"pattern": _TRAILING_NEWLINE}


def main() -> int:
    """Write every schema file and remove stale ones."""
    JSON_DIR.mkdir(exist_ok=True)
    rendered = render_schemas()
    for stale in JSON_DIR.glob("*.json"):
        if stale.name not in rendered:
            stale.unlink()
    for name, text in rendered.items():
        (JSON_DIR / name).write_text(text)
    print(f"wrote {len(rendered)} schemas to {JSON_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
