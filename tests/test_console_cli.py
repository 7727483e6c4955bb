"""`skuforge serve console` refuses to start without reviewers; `skuforge console` exports to Label Studio."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from services.console.config import parse_users
from services.console.decisions import mask_from_ref
from services.console.labelstudio import rle_to_mask
from services.console.security import hash_password
from services.console.tasks import TaskStore
from shared.store import FileStore
from skuforge_cli.main import main as cli_main
from tests.support.console import flagged_item, pending_envelope


def test_serve_console_needs_reviewers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("SKUFORGE_CONSOLE_USERS", raising=False)
    monkeypatch.setenv("SKUFORGE_CONSOLE_DB_PATH", str(tmp_path / "tasks.sqlite3"))
    assert cli_main(["serve", "console"]) == 2
    assert "SKUFORGE_CONSOLE_USERS is unset" in capsys.readouterr().err
    monkeypatch.setenv("SKUFORGE_CONSOLE_USERS", "alice")  # no password
    assert cli_main(["serve", "console"]) == 2
    assert "SKUFORGE_CONSOLE_USERS" in capsys.readouterr().err


def test_export_labelstudio_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = FileStore(tmp_path / "store")
    tasks = TaskStore(tmp_path / "tasks.sqlite3")
    envelope = pending_envelope(flagged_item(store, 0))
    tasks.add_pending(envelope)
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    monkeypatch.setenv("SKUFORGE_CONSOLE_DB_PATH", str(tmp_path / "tasks.sqlite3"))
    out = tmp_path / "tasks.json"
    config = tmp_path / "config.xml"
    argv = ["console", "export-labelstudio", "--out", str(out), "--config-out", str(config)]
    assert cli_main(argv) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["exported"] == 1
    [task] = json.loads(out.read_text())
    assert task["data"]["skuforge_task_id"] == envelope.event_id
    result = task["predictions"][0]["result"][0]
    predicted = mask_from_ref(store, envelope.payload.matted.predicted_mask)
    decoded = rle_to_mask(result["value"]["rle"], result["original_width"], result["original_height"])
    assert np.array_equal(decoded, predicted)
    assert '<BrushLabels name="mask" toName="image">' in config.read_text()

    # A --config-out that cannot be written: exit 2 means nothing written, and the tasks file is not.
    out.unlink()
    argv = [
        "console",
        "export-labelstudio",
        "--out",
        str(out),
        "--config-out",
        str(tmp_path / "no" / "c.xml"),
    ]
    assert cli_main(argv) == 2
    assert "cannot write" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("bad_out", ["no/tasks.json", "a-folder"])
def test_export_labelstudio_writes_both_files_or_neither(
    bad_out: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Before, --config-out was written first: a --out that could not be written left a new config
    # (or replaced the previous one) while exit 2 said nothing was written.
    store = FileStore(tmp_path / "store")
    tasks = TaskStore(tmp_path / "tasks.sqlite3")
    tasks.add_pending(pending_envelope(flagged_item(store, 0)))
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    monkeypatch.setenv("SKUFORGE_CONSOLE_DB_PATH", str(tmp_path / "tasks.sqlite3"))
    (tmp_path / "a-folder").mkdir()
    config = tmp_path / "config.xml"
    config.write_text("<View>the project's own config</View>")
    argv = ["console", "export-labelstudio", "--out", str(tmp_path / bad_out), "--config-out", str(config)]
    assert cli_main(argv) == 2
    assert "cannot write" in capsys.readouterr().err
    assert config.read_text() == "<View>the project's own config</View>"
    left = sorted(path.name for path in tmp_path.iterdir())
    assert left == ["a-folder", "config.xml", "store", "tasks.sqlite3"]  # no partial file either
    assert not any((tmp_path / "a-folder").iterdir())
    with pytest.raises(SystemExit) as refused:  # one file cannot hold both
        cli_main(["console", "export-labelstudio", "--out", str(config), "--config-out", str(config)])
    assert refused.value.code == 2 and "the same file as --out" in capsys.readouterr().err


def test_the_label_studio_commands_refuse_a_missing_table_and_an_unknown_sku(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Before, a mistyped SKUFORGE_CONSOLE_DB_PATH created a new, empty table and reported
    # {"exported": 0} (or every annotation "TaskNotFound", {"decided": 0}), exit 0; so did a
    # mistyped --sku.
    store = FileStore(tmp_path / "store")
    TaskStore(tmp_path / "tasks.sqlite3").add_pending(pending_envelope(flagged_item(store, 0)))
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    monkeypatch.setenv("SKUFORGE_CONSOLE_DB_PATH", str(tmp_path / "typo" / "tasks.sqlite3"))
    out = tmp_path / "tasks.json"
    assert cli_main(["console", "export-labelstudio", "--out", str(out)]) == 2
    assert f"no task table at {tmp_path / 'typo' / 'tasks.sqlite3'}" in capsys.readouterr().err
    (tmp_path / "export.json").write_text("[]")
    assert cli_main(["console", "import-labelstudio", "--no-publish", str(tmp_path / "export.json")]) == 2
    assert "no task table at" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists() and not out.exists()
    monkeypatch.setenv("SKUFORGE_CONSOLE_DB_PATH", str(tmp_path / "tasks.sqlite3"))
    assert cli_main(["console", "export-labelstudio", "--out", str(out), "--sku", "SKU-TYPO"]) == 2
    assert "--sku SKU-TYPO: no task of that SKU" in capsys.readouterr().err
    assert cli_main(["console", "export-labelstudio", "--out", str(out), "--sku", "SKU-00001"]) == 0


def test_serve_console_refuses_a_port_out_of_range_and_a_table_path_that_is_a_folder(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Before: OverflowError from bind() for --port 99999, and a TransientError traceback (or
    # FileExistsError) for a table path that is a folder or under a file.
    monkeypatch.setenv("SKUFORGE_CONSOLE_USERS", "alice:a-long-password")
    monkeypatch.setenv("SKUFORGE_CONSOLE_DB_PATH", str(tmp_path / "tasks.sqlite3"))
    with pytest.raises(SystemExit) as exited:
        cli_main(["serve", "console", "--port", "99999"])
    assert exited.value.code == 2
    assert "--port: must be from 0 to 65535, got 99999" in capsys.readouterr().err
    for place, message in (
        (tmp_path, "is a folder"),
        (tmp_path / "tasks.sqlite3" / "x", "is a file, not a folder"),
    ):
        (tmp_path / "tasks.sqlite3").write_text("")
        monkeypatch.setenv("SKUFORGE_CONSOLE_DB_PATH", str(place))
        assert cli_main(["serve", "console"]) == 2
        err = capsys.readouterr().err
        assert "SKUFORGE_CONSOLE_DB_PATH" in err and message in err and "Traceback" not in err, err


@pytest.mark.parametrize("content", [b"", b"\xff\xd8\xff\xe0 a JPEG, not a task table" * 40])
def test_the_label_studio_commands_refuse_a_file_that_is_not_a_task_table(
    content: bytes, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Before: SKUFORGE_CONSOLE_DB_PATH naming a JPEG gave a sqlite3.DatabaseError traceback, and an empty
    # file was silently turned into a new, empty task table ({"exported": 0}, exit 0).
    not_a_table = tmp_path / "photo.jpg"
    not_a_table.write_bytes(content)
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    monkeypatch.setenv("SKUFORGE_CONSOLE_DB_PATH", str(not_a_table))
    out = tmp_path / "tasks.json"
    assert cli_main(["console", "export-labelstudio", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{not_a_table}" in err and "not a task table" in err and "Traceback" not in err
    assert not_a_table.read_bytes() == content and not out.exists()


def test_import_refuses_an_export_nested_too_deep_to_parse(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Before: json.loads raised RecursionError, which neither the command nor the CLI caught: a
    # traceback, not "cannot read" and exit 2.
    store = FileStore(tmp_path / "store")
    TaskStore(tmp_path / "tasks.sqlite3").add_pending(pending_envelope(flagged_item(store, 0)))
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    monkeypatch.setenv("SKUFORGE_CONSOLE_DB_PATH", str(tmp_path / "tasks.sqlite3"))
    export = tmp_path / "export.json"
    export.write_text("[" * 100_000)
    assert cli_main(["console", "import-labelstudio", "--no-publish", str(export)]) == 2
    err = capsys.readouterr().err
    assert f"cannot read {export}" in err and "nested too deeply" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("errors", ["surrogateescape", "strict"])
def test_hash_password_refuses_a_password_that_is_not_utf8(
    errors: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: a Latin-1 password piped in was a traceback (UnicodeEncodeError in the hash, or
    # UnicodeDecodeError reading stdin), not one line and exit 2; the login form sends UTF-8 only.
    stdin = io.TextIOWrapper(io.BytesIO(b"caf\xe9-pass\n"), encoding="utf-8", errors=errors)
    monkeypatch.setattr("sys.stdin", stdin)
    assert cli_main(["console", "hash-password"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "not valid UTF-8" in captured.err and len(captured.err.splitlines()) == 1


@pytest.mark.parametrize("name", ["gate", "skuforge", "Gate", "SKUFORGE"])
def test_a_reviewer_named_as_the_system_that_closes_tasks_is_refused(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # The gate closes tasks it accepted as "gate" and withdrawals close them as "skuforge" (decided_by,
    # audit): a reviewer of either name made their decisions indistinguishable from the system's.
    users = f"alice:a-long-password,{name}:another-password"
    with pytest.raises(ValueError, match=f"reviewer {name!r}: the console itself decides as"):
        parse_users(users)
    # The same refusal stops `serve console` at start-up and the Label Studio commands.
    store = FileStore(tmp_path / "store")
    TaskStore(tmp_path / "tasks.sqlite3").add_pending(pending_envelope(flagged_item(store, 0)))
    (tmp_path / "export.json").write_text("[]")
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    monkeypatch.setenv("SKUFORGE_CONSOLE_DB_PATH", str(tmp_path / "tasks.sqlite3"))
    monkeypatch.setenv("SKUFORGE_CONSOLE_USERS", users)
    assert cli_main(["console", "import-labelstudio", "--no-publish", str(tmp_path / "export.json")]) == 2
    err = capsys.readouterr().err
    assert f"SKUFORGE_CONSOLE_USERS: Value error, reviewer {name!r}: the console itself" in err, err
    assert "another-password" not in err and "Traceback" not in err


@pytest.mark.parametrize("digits", ["\u0661\u0666", "\uff11\uff16"], ids=["arabic-indic", "fullwidth"])
def test_serve_console_refuses_a_scrypt_cost_in_other_scripts_digits(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, digits: str
) -> None:
    # The cost's \d and int() read any script's digits: "scrypt:١٦:8:1:..." was taken as N=16, an
    # entry that `hash-password` never writes and that other tools reading the variable refuse.
    entry = hash_password("a-long-password", cost=(16, 8, 1)).replace("scrypt:16:", f"scrypt:{digits}:")
    with pytest.raises(ValueError, match="must be 'scrypt:N:r:p:salt:key'"):
        parse_users(f"alice:{entry}")
    monkeypatch.setenv("SKUFORGE_CONSOLE_DB_PATH", str(tmp_path / "tasks.sqlite3"))
    monkeypatch.setenv("SKUFORGE_CONSOLE_USERS", f"alice:{entry}")
    assert cli_main(["serve", "console"]) == 2
    err = capsys.readouterr().err
    assert "SKUFORGE_CONSOLE_USERS: Value error, reviewer 'alice': a password starting 'scrypt:'" in err, err
    assert "Traceback" not in err
