"""Found in review 47 (second pass) of the console: a temporary that could not be removed after a failed
export replaced the export's own error; the withdrawal sweep went on reading every record once the store
was away, each read waiting out the store's retries; an error on an HTML page reached a browser as JSON."""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from services.console.withdrawn import WithdrawalSweep
from shared.store import ObjectStore, S3Store
from shared.trainstore.manifest import ManifestStore
from shared.trainstore.withdrawals import Withdrawals
from skuforge_cli.main import main as cli_main
from tests.support.console import app_for, build_console, flag_made_from, login, use_cli_on, with_flagged
from tests.support.s3 import restart_s3_server, stop_s3_server


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


def test_a_sweep_stops_at_the_first_record_the_store_cannot_give(
    tmp_path: Path, s3_store: ObjectStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Five photos withdrawn and put back, their tasks waiting; the S3 store goes away once the sweep has
    # listed the records. Before, the sweep read each photo's record in turn, each read waiting out
    # botocore's retries against a store already known to be away (a minute a photo, on a real one).
    parts = build_console(tmp_path)
    photos = [f"p{index}" for index in range(5)]
    for index, photo_id in enumerate(photos):
        flag_made_from(parts, index, photo_id)
    for key in list(parts.store.list_keys("trainstore/")):
        s3_store.put_bytes(key, parts.store.get_bytes(key))
    withdrawals = Withdrawals(ManifestStore(s3_store, "trainstore"))
    withdrawals.withdraw("SKU-A", "soda can", photos, by="owner")
    withdrawals.reinstate("SKU-A", photos)
    sweep = WithdrawalSweep(parts.tasks, withdrawals)
    assert isinstance(s3_store, S3Store)
    asked: list[str] = []

    def note_get(request: Any, **_: Any) -> None:
        asked.append(str(request.url).split("?")[0])

    s3_store.client.meta.events.register("before-send.s3.GetObject", note_get)
    records = withdrawals.records

    def listed_then_away() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        listed = records()
        stop_s3_server()
        return listed

    monkeypatch.setattr(withdrawals, "records", listed_then_away)
    try:
        with caplog.at_level(logging.WARNING, logger="skuforge.console.withdrawn"):
            assert sweep.sweep() == []
    finally:
        restart_s3_server()

    assert len(set(asked)) == 1, sorted(set(asked))  # one record tried (with its retries), not five
    warnings = [record for record in caplog.records if record.name == "skuforge.console.withdrawn"]
    assert len(warnings) == 1, [record.getMessage() for record in warnings]
    assert getattr(warnings[0], "photos", None) == len(photos)  # all left for the next sweep
    monkeypatch.undo()  # the store is back: the next sweep closes them
    assert len(sweep.sweep()) == len(photos)


MISSING = "0" * 32  # a task id no task has
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        (f"/tasks/{MISSING}", 404, f"no task {MISSING}"),
        ("/?iou_min=abc", 422, "iou_min should be a number from 0 to 1; got "),
    ],
    ids=["item-page", "queue-filter"],
)
def test_an_error_on_a_page_reaches_a_browser_as_a_page(
    tmp_path: Path, path: str, status: int, reason: str
) -> None:
    # Before, a browser opening a link to a task gone from the table, or a queue address with a bad
    # filter, was shown the raw JSON {"detail": ...}, with no way back but the address bar.
    client = TestClient(app_for(with_flagged(build_console(tmp_path), 1)), base_url="http://console.test")
    login(client)

    response = client.get(path, headers=BROWSER)

    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html"), response.headers
    assert f"<h1>{status} " in response.text and reason in response.text, response.text
    assert '<a href="/">back to the queue</a>' in response.text


def test_the_api_and_a_script_still_get_json_errors(tmp_path: Path) -> None:
    client = TestClient(app_for(with_flagged(build_console(tmp_path), 1)), base_url="http://console.test")
    login(client)

    api = client.get(f"/api/tasks/{MISSING}", headers=BROWSER)  # /api/ is JSON, whatever it accepts
    script = client.get(f"/tasks/{MISSING}", headers={"Accept": "application/json"})

    for response in (api, script):
        assert response.status_code == 404
        assert response.json() == {"detail": f"no task {MISSING}"}
