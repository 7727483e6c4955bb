"""Fixtures for the real Prometheus binaries (Debian's ``prometheus`` package; .ci/run installs it).

A test that needs ``promtool`` or ``prometheus`` skips, saying how to install it, only when the binary
is absent on this machine; CI installs the package, so there they always run.
"""

from __future__ import annotations

import pytest

from devstack.prometheus import PrometheusMissing, find_binary


def _binary_or_skip(name: str) -> str:
    try:
        return find_binary(name)
    except PrometheusMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def promtool_bin() -> str:
    """Path of promtool (skips the test when it is not installed)."""
    return _binary_or_skip("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    """Path of the prometheus server (skips the test when it is not installed)."""
    return _binary_or_skip("prometheus")


@pytest.fixture(scope="session")
def amtool_bin() -> str:
    """Path of amtool, from Debian's prometheus-alertmanager (skips the test when it is not installed)."""
    return _binary_or_skip("amtool")
