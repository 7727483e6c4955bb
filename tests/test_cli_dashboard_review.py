"""`skuforge dashboard render` without its extra, or with a window that means nothing: one line, exit 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from skuforge_cli.main import main as cli_main


def _no_prometheus(*_args: Any, **_kwargs: Any) -> Any:
    raise AssertionError("Prometheus was asked before the command could run")


def test_render_without_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails, installed or not
    monkeypatch.setattr("devstack.dashboard.api_get", _no_prometheus)
    out = tmp_path / "panels.png"
    assert cli_main(["dashboard", "render", "--prometheus", "http://127.0.0.1:1", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        "skuforge dashboard render: needs matplotlib, from the docs extra: pip install 'skuforge[docs]'\n"
    )
    assert not out.exists()


@pytest.mark.parametrize("minutes", ["0", "-5", "inf", "nan"])
def test_render_refuses_a_window_that_is_not_a_positive_number(
    minutes: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("devstack.dashboard.api_get", _no_prometheus)
    argv = ["dashboard", "render", "--prometheus", "http://127.0.0.1:1", "--out", str(tmp_path / "p.png")]
    with pytest.raises(SystemExit) as exited:
        cli_main([*argv, "--minutes", minutes])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith(f"argument --minutes: must be a number above 0, got {minutes}\n")


@pytest.mark.parametrize("out", ["{tmp}", "{tmp}/in-the-way/panels.png"])
def test_render_checks_out_before_it_asks_prometheus(
    out: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A folder, or a file where its folder goes, failed only at savefig, after every panel's queries,
    # as exit 1 under the Prometheus address: "skuforge dashboard render: http://...: [Errno 21] ...".
    (tmp_path / "in-the-way").write_text("mine\n")
    monkeypatch.setattr("devstack.dashboard.api_get", _no_prometheus)
    path = out.format(tmp=tmp_path)
    with pytest.raises(SystemExit) as exited:
        cli_main(["dashboard", "render", "--prometheus", "http://127.0.0.1:1", "--out", path])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"skuforge dashboard render: error: --out {path}: ")
