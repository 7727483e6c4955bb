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
        (["topics", "crate"], "'create'"),
        (["dlq", "lst"], "'list'"),
        (["dataset", "stat"], "'stats'"),
        (["kafka", "statsu"], "'status'"),
        (["matting", "trian"], "'train'"),
        (["adapters", "regster"], "'register'"),
        (["console", "export-labelstdio"], "'export-labelstudio'"),
        (["dashboard", "rendr"], "'render'"),
    ],
)
def test_a_misspelt_command_or_stage_names_the_closest_one(
    argv: list[str], meant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A command, a stage of run or serve, or a command's own action (topics create, kafka status, ...):
    argparse listed the choices and left the reader to find the slip."""
    with pytest.raises(SystemExit) as stopped:
        skuforge_main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    last = err.strip().splitlines()[-1]
    assert f"did you mean {meant}?" in last, last
    assert "Traceback" not in err


def test_a_subcommand_like_none_lists_them_without_a_guess(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        skuforge_main(["kafka", "xyzzy"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert "did you mean" not in err and "'status'" in err


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


def test_options_after_a_subcommand_still_parse() -> None:
    """The check is of the subcommand's name only: the words after it go to its own parser (``one_of``
    as the subparsers' type refused ``--data-dir`` here)."""
    from devstack.broker import _parser

    args = _parser("skuforge kafka").parse_args(["status", "--data-dir", "/tmp/skuforge-kafka-x"])
    assert args.command == "status"
    assert str(args.data_dir) == "/tmp/skuforge-kafka-x"
