"""Reading deploy/compose*.yaml as ``docker compose`` does: its durations and its ``${VAR}`` forms."""

from __future__ import annotations

import re
from collections.abc import Mapping

DEFAULT_GRACE = "10s"  # a service without stop_grace_period gets this


def compose_duration_s(text: str) -> float:
    """A compose duration (``"150s"``, ``"2m30s"``; each part adds, as in Go's ``ParseDuration``) in
    seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", text)
    assert parts and "".join(amount + unit for amount, unit in parts) == text, f"not a duration: {text!r}"
    return sum(float(amount) * units[unit] for amount, unit in parts)


def interpolated(text: str, shell: Mapping[str, str]) -> str:
    """``text`` with compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` filled from
    ``shell`` (the forms the compose files use; an empty variable counts as unset for ``:-``/``:?``)."""

    def value(match: re.Match[str]) -> str:
        name, form, rest = match.group(1), match.group(2), match.group(3)
        if shell.get(name):
            return shell[name]
        assert form != ":?", f"compose refuses to start without {name}: {rest}"
        return rest if form == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", value, text)
