"""The command line as a new user meets it (review 34): a misspelt command, stage or prometheus action
is answered with the name it probably meant, exit 2 and no traceback."""

from __future__ import annotations

import pytest

from skuforge_cli.main import main as skuforge_main


@pytest.mark.parametrize(
    ("argv", "meant"),
    [
        (["topic", "list"], "'topics'"),
        (["dataset-export"], "'dataset'"),
        (["run", "gatee"], "'gate'"),
        (["run", "lora_trainer"], "'lora-trainer'"),
        (["serve", "consle"], "'console'"),
        (["prometheus", "metric"], "'metrics'"),
    ],
)
def test_a_misspelt_command_or_stage_names_the_closest_one(
    argv: list[str], meant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        skuforge_main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    last = err.strip().splitlines()[-1]
    assert f"did you mean {meant}?" in last, last
    assert "Traceback" not in err


def test_a_name_like_no_command_lists_them_without_a_guess(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        skuforge_main(["xyzzy"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert "did you mean" not in err and "'topics'" in err


def test_prometheus_metrics_refuses_write_it_would_ignore(capsys: pytest.CaptureFixture[str]) -> None:
    """``--write`` writes the scrape config only: with ``metrics`` it printed the table, wrote no file and
    said 0, so a user updating docs/ops.md's copy believed it done."""
    with pytest.raises(SystemExit) as stopped:
        skuforge_main(["prometheus", "metrics", "--write"])
    out, err = capsys.readouterr()
    assert stopped.value.code == 2
    assert out == ""
    assert "--write" in err.strip().splitlines()[-1] and "config" in err.strip().splitlines()[-1]
