"""Found in review 47 (second pass) of the console: a temporary that could not be removed after a failed
export replaced the export's own error."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from skuforge_cli.main import main as cli_main
from tests.support.console import build_console, use_cli_on, with_flagged


def test_an_export_whose_temporary_cannot_be_removed_keeps_its_own_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # --out is written to its temporary, then --config-out's folder is missing. Before, the temporary's
    # removal failing (here: permission denied) replaced that error: "cannot write Permission denied".
    parts = with_flagged(build_console(tmp_path), 1)
    use_cli_on(parts, monkeypatch)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "tasks.json"
    config_out = tmp_path / "no-such-folder" / "config.xml"
    unlink = Path.unlink

    def refuse_temporaries(self: Path, missing_ok: bool = False) -> None:
        if self.name.startswith(".skuforge-export.") and self.exists():
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse_temporaries)

    status = cli_main(["console", "export-labelstudio", "--out", str(out), "--config-out", str(config_out)])

    err = capsys.readouterr().err
    assert status == 2
    assert f"cannot write {config_out}: No such file or directory" in err, err
    [left] = list(out_dir.iterdir())
    assert f"could not remove the temporary {left}: Permission denied" in err, err
    assert not out.exists()
