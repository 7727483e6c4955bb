"""`skuforge up --with-prometheus`: the Prometheus it runs scrapes the stack's actual ports, and a missing
binary stops it at once with what to install."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from devstack.prometheus import ALERTS_FILE, stack_prometheus
from devstack.up import build_config, main


def test_the_stack_prometheus_scrapes_every_service_on_the_stacks_own_ports(tmp_path: Path) -> None:
    config = build_config(tmp_path / "stack", ports_mode="free")
    prometheus = stack_prometheus(tmp_path / "prometheus", config.ports, port=19090, scrape_interval_s=1)
    written = yaml.safe_load(prometheus.config_path.read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in written["scrape_configs"]}
    ports = config.ports
    assert targets == {
        **{
            name: [f"127.0.0.1:{ports[name]}"]
            for name in ("captioner", "generator", "matting", "gate", "trainstore")
        },
        "console": [f"127.0.0.1:{ports['console_metrics']}"],
        "generator-server": [f"127.0.0.1:{ports['generator_server_metrics']}"],
        "triton": [f"127.0.0.1:{ports['triton_metrics']}"],
    }
    assert written["global"]["scrape_interval"] == "1s"
    assert (tmp_path / "prometheus" / "alerts.yml").read_text() == ALERTS_FILE.read_text()
    assert prometheus.url == "http://127.0.0.1:19090"


def test_up_with_prometheus_but_no_binary_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKUFORGE_PROMETHEUS_BIN", str(tmp_path / "no-such-prometheus"))
    code = main(["--workdir", str(tmp_path / "stack"), "--ports", "free", "--with-prometheus"])
    assert code == 2
    assert "apt-get install prometheus" in capsys.readouterr().err


def test_the_stack_prometheus_never_takes_a_port_the_stack_gave_a_service(tmp_path: Path) -> None:
    # 9090 was taken whenever nothing listened there yet: a stack whose ports.json gives it to a service
    # (the services start first, so 9090 was still free) saw Prometheus exit "address already in use"
    # after the whole stack had started, and the start-up failed.
    from devstack.broker import port_in_use
    from devstack.prometheus import DEFAULT_PROMETHEUS_PORT

    if port_in_use(DEFAULT_PROMETHEUS_PORT):
        pytest.skip("9090 is taken on this machine: the stack's Prometheus would not try it")
    ports = {**build_config(tmp_path / "stack", ports_mode="free").ports, "console_metrics": 9090}
    prometheus = stack_prometheus(tmp_path / "prometheus", ports)
    assert prometheus.port not in ports.values()


def test_a_free_port_the_os_hands_out_again_is_not_the_stack_prometheuss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `--ports free` chose the stack's ports, released them, then asked the OS for one more: it may hand
    # out one of those again (they are not bound until the services start).
    ports = build_config(tmp_path / "stack", ports_mode="free").ports
    handed_out = iter([ports["gate"], ports["console_metrics"], 45999])
    monkeypatch.setattr("devstack.prometheus.free_port", lambda: next(handed_out))
    prometheus = stack_prometheus(tmp_path / "prometheus", ports, prefer_default_port=False)
    assert prometheus.port == 45999


def folder_contents(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with a file's bytes (None for a folder): what a refused start must
    leave as it was."""
    return {
        str(path.relative_to(folder)): path.read_bytes() if path.is_file() else None
        for path in sorted(folder.rglob("*"))
    }


@pytest.fixture
def refused_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The workdir of a previous run (its saved ports), and `up` failing the test if it starts the stack;
    no SKUFORGE_CONSOLE_USERS, so `up` would make a login of its own (a console-login file)."""

    def starts_the_stack(*args: object, **kwargs: object) -> None:
        raise AssertionError("started the stack after refusing its input")

    monkeypatch.setattr("devstack.up.Supervisor", starts_the_stack)
    monkeypatch.delenv("SKUFORGE_CONSOLE_USERS", raising=False)
    workdir = tmp_path / "stack"
    workdir.mkdir()
    (workdir / "ports.json").write_text('{"console": 8080}\n')
    return workdir


def test_up_with_a_missing_rules_file_is_refused_leaving_the_stack_folder_as_it_was(
    tmp_path: Path, refused_stack: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The refusal came after ports.json (with the ports of a stack that never ran) and the login were
    # written, and the workdir's lock made.
    before = folder_contents(refused_stack)
    missing = tmp_path / "missing.yml"
    argv = ["--workdir", str(refused_stack), "--ports", "free", "--with-prometheus"]
    assert main([*argv, "--prometheus-rules", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skuforge up: --with-prometheus: ") and str(missing) in err
    assert err.count("\n") == 1
    assert folder_contents(refused_stack) == before


def test_up_with_rules_prometheus_cannot_load_is_refused_before_anything_starts(
    tmp_path: Path, refused_stack: Path, capsys: pytest.CaptureFixture[str], promtool_bin: str
) -> None:
    # Prometheus starts last: a rules file it cannot load was found only after every service had
    # started, when it exited and the whole stack was stopped again.
    before = folder_contents(refused_stack)
    rules = tmp_path / "my-alerts.yml"
    rules.write_text("groups:\n  - name: mine\n    rules:\n      - alert: Broken\n        expr: sum(\n")
    argv = ["--workdir", str(refused_stack), "--ports", "free", "--with-prometheus"]
    code = main([*argv, "--prometheus-rules", str(rules)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"skuforge up: --prometheus-rules {rules}: promtool refuses it: ")
    assert '"Broken": could not parse expression' in err and "unclosed left parenthesis" in err
    assert err.count("\n") == 1
    assert folder_contents(refused_stack) == before


def test_the_stack_prometheus_config_passes_promtool_as_up_writes_it(
    tmp_path: Path, promtool_bin: str
) -> None:
    # The check `up` runs before anything starts, on what it runs: replicas and the trainer included.
    from devstack.prometheus import config_problem
    from devstack.up import parse_replicas

    config = build_config(
        tmp_path / "stack", ports_mode="free", with_trainer=True, replicas=parse_replicas("matting=2")
    )
    prometheus = stack_prometheus(
        tmp_path / "prometheus",
        config.ports,
        scrape_interval_s=0.5,
        stage_members={stage.name: config.replica_names(stage.name) for stage in config.stages},
    )
    assert config_problem(prometheus.config_path) is None
    written = yaml.safe_load(prometheus.config_path.read_text())
    matting = next(job for job in written["scrape_configs"] if job["job_name"] == "matting")
    assert len(matting["static_configs"][0]["targets"]) == 2
