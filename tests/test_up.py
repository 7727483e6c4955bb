"""``skuforge up`` and its supervisor: all starts in order, a dead stage comes back, Ctrl-C leaves nothing.

The supervisor tests use small Python children (one of which hides a grandchild in a session of its
own that ignores SIGTERM); the slow test runs the real stack (Kafka, Triton, every stage, console)
as a user would, on free ports, in a temporary workdir.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import devstack.up
from bench.replicas import group_assignment
from devstack.supervisor import (
    SUPERVISOR_ID_ENV,
    ServiceSpec,
    Supervisor,
    SupervisorError,
    processes_with_env,
)
from devstack.up import DEFAULT_PORTS, build_config, build_specs, main, parse_replicas, read_state
from schemas.flow import PIPELINE
from shared.config import load_settings
from tests.support.polling import wait_for

REPO_ROOT = Path(__file__).resolve().parent.parent
STAGES = [stage.name for stage in PIPELINE]


def alive(pid: int) -> bool:
    """The pid runs and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and alive(int(entry.name)):
            found.append(f"{entry.name}: {cmdline}")
    return found


def python_child(tmp_path: Path, name: str, code: str, **kwargs: Any) -> ServiceSpec:
    script = tmp_path / f"{name}.py"
    script.write_text(textwrap.dedent(code))
    return ServiceSpec(
        name=name, argv=[sys.executable, str(script)], log_path=tmp_path / f"{name}.log", **kwargs
    )


def test_a_stack_json_whose_pid_now_names_another_process_is_stale(tmp_path: Path) -> None:
    """A stack killed with SIGKILL (or a reboot) leaves stack.json saying "ready"; its pid may since
    name another process, which `up` must not call a running stack (nor tell the user to kill)."""
    newcomer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        state = {"state": "ready", "supervisor_pid": newcomer.pid, "started_at": time.time() - 3600}
        (tmp_path / "stack.json").write_text(json.dumps(state))
        assert read_state(tmp_path) is None
        state["started_at"] = time.time()  # written by that very process, just after it started
        (tmp_path / "stack.json").write_text(json.dumps(state))
        assert read_state(tmp_path) == state
    finally:
        newcomer.kill()
        newcomer.wait()


def test_the_documented_ports_do_not_clash() -> None:
    assert len(set(DEFAULT_PORTS.values())) == len(DEFAULT_PORTS)


def test_replicas_are_distinct_static_members_of_one_group_each_with_its_own_port(tmp_path: Path) -> None:
    replicas = parse_replicas("matting=2, generator=3")
    assert replicas == {"matting": 2, "generator": 3}
    config = build_config(tmp_path, ports_mode="free", replicas=replicas)
    specs = {spec.name: spec for spec in build_specs(config)}
    for stage, count in (("matting", 2), ("generator", 3), ("gate", 1)):
        names = [stage] + [f"{stage}-{index}" for index in range(2, count + 1)]
        members = [specs[name] for name in names]
        assert not any(name in specs for name in (f"{stage}-{count + 1}",))
        # Every replica runs the same stage (one consumer group) as a distinct static member.
        assert all(member.argv[-2:] == ["run", stage] for member in members)
        assert [member.env["SKUFORGE_GROUP_INSTANCE_ID"] for member in members] == [
            f"{stage}-{index}" for index in range(1, count + 1)
        ]
    ports = [
        spec.env["SKUFORGE_METRICS_PORT"] for spec in specs.values() if "SKUFORGE_METRICS_PORT" in spec.env
    ]
    # Every stage member's, and the generator server's own /metrics beside Triton's.
    assert len(ports) == len(set(ports)) == len(STAGES) + 1 + 2 + 1
    assert specs["triton"].env["SKUFORGE_METRICS_PORT"] == str(config.ports["generator_server_metrics"])
    assert specs["matting-2"].log_path.name == "matting-2.log"


# "matting=²": str.isdigit() takes a superscript two, int() does not (a message of int()'s, not ours);
# "matting=٣": str.isdecimal() and int() both take an Arabic-Indic three, and up ran 3 members.
@pytest.mark.parametrize(
    "text", ["matting", "matting=0", "nosuch=2", "matting=two", "console=2", "matting=²", "matting=٣"]
)
def test_a_bad_replicas_option_is_refused_naming_the_stages(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match="STAGE=COUNT with STAGE one of captioner"):
        parse_replicas(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["--replicas", text])
    assert exit_info.value.code == 2
    assert "--replicas" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # The last count silently beat the first: 3 members.
        ("matting=2,matting=3", "--replicas: matting is named twice"),
        # No bound: up chose 100,000 ports and started as many processes.
        ("generator=2,matting=100000", "--replicas: matting=100000 is more than 32 members of matting"),
    ],
)
def test_replicas_up_cannot_run_are_refused_naming_the_stage(
    text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match=message):
        parse_replicas(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["--replicas", text])
    assert exit_info.value.code == 2
    assert f"skuforge up: error: {message}" in capsys.readouterr().err


def test_replicas_up_to_the_cap_are_run() -> None:
    assert parse_replicas("matting=32") == {"matting": 32}


@pytest.mark.parametrize(
    ("backend_env", "model_env", "gpu", "expected"),
    [
        (None, None, False, "composite"),
        (None, "/models/sd15-inpaint", False, "composite"),  # diffusion on a CPU: minutes per image
        (None, "/models/sd15-inpaint", True, "diffusion"),
        ("composite", "/models/sd15-inpaint", True, "composite"),
        ("diffusion", None, False, "diffusion"),
    ],
)
def test_the_backend_is_diffusion_only_with_a_model_and_a_gpu_unless_forced(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    backend_env: str | None,
    model_env: str | None,
    gpu: bool,
    expected: str,
) -> None:
    for name, value in (
        ("SKUFORGE_GENERATION_BACKEND", backend_env),
        ("SKUFORGE_DIFFUSION_MODEL", model_env),
    ):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(devstack.up, "_cuda_available", lambda: gpu)
    config = build_config(tmp_path, ports_mode="free")
    assert config.backends == [expected]
    # The generator stage asks Triton for the model the server was started with.
    assert config.env()["SKUFORGE_GENERATION_BACKEND"] == expected


@pytest.mark.parametrize(
    ("backend_env", "mix", "expected"),
    [
        (None, '{"composite": 3, "diffusion": 1}', ["composite", "diffusion"]),
        ("composite", '{"diffusion": 1}', ["diffusion"]),
        ("diffusion", '{"composite": 1, "diffusion": 0}', ["composite"]),
    ],
)
def test_triton_serves_every_backend_of_the_generators_mix(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    backend_env: str | None,
    mix: str,
    expected: list[str],
) -> None:
    """SKUFORGE_GENERATION_BACKEND_MIX was ignored: Triton served SKUFORGE_GENERATION_BACKEND's model
    alone, the generator asked for the other one too, got "unknown model" (a transient error) and held
    its partition, retrying for ever, while the stack said it was ready."""
    if backend_env is None:
        monkeypatch.delenv("SKUFORGE_GENERATION_BACKEND", raising=False)
    else:
        monkeypatch.setenv("SKUFORGE_GENERATION_BACKEND", backend_env)
    monkeypatch.setenv("SKUFORGE_GENERATION_BACKEND_MIX", mix)
    monkeypatch.setattr(devstack.up, "_cuda_available", lambda: False)
    config = build_config(tmp_path, ports_mode="free", kafka_bootstrap="127.0.0.1:1")
    assert config.backends == expected
    (triton,) = [spec for spec in build_specs(config) if spec.name == "triton"]
    assert [triton.argv[i + 1] for i, arg in enumerate(triton.argv) if arg == "--backend"] == expected


def test_a_backend_given_twice_is_served_once_and_is_what_the_generator_asks_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--backend composite --backend composite` gave Triton the model twice and, two backends, left the
    generator asking the shell's SKUFORGE_GENERATION_BACKEND (diffusion), a model Triton did not serve:
    "unknown model", a transient error, retried for ever on a stack that said it was ready."""
    monkeypatch.setenv("SKUFORGE_GENERATION_BACKEND", "diffusion")
    monkeypatch.delenv("SKUFORGE_GENERATION_BACKEND_MIX", raising=False)
    config = build_config(
        tmp_path, ports_mode="free", kafka_bootstrap="127.0.0.1:1", backends=["composite", "composite"]
    )
    assert config.backends == ["composite"]
    assert config.env()["SKUFORGE_GENERATION_BACKEND"] == "composite"
    (triton,) = [spec for spec in build_specs(config) if spec.name == "triton"]
    assert [triton.argv[i + 1] for i, arg in enumerate(triton.argv) if arg == "--backend"] == ["composite"]


def test_a_backend_option_that_leaves_out_one_of_the_mix_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKUFORGE_GENERATION_BACKEND_MIX", '{"composite": 3, "diffusion": 1}')

    def starts_the_stack(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("started a stack whose Triton leaves out a backend of the mix")

    monkeypatch.setattr(devstack.up, "build_config", starts_the_stack)
    with pytest.raises(SystemExit) as exited:
        main(["--workdir", str(tmp_path / "up"), "--backend", "composite"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "SKUFORGE_GENERATION_BACKEND_MIX" in err and "diffusion" in err
    assert not (tmp_path / "up").exists()  # nothing started, nothing written


@pytest.mark.parametrize(
    ("argv", "backend_env", "message"),
    [
        (
            ["--with-trainer", "--backend", "composite"],
            None,
            "--with-trainer: the lora-trainer needs SKUFORGE_LORA_MODEL or SKUFORGE_DIFFUSION_MODEL",
        ),
        (["--backend", "diffusion"], None, "--backend diffusion needs SKUFORGE_DIFFUSION_MODEL"),
        ([], "diffusion", "SKUFORGE_GENERATION_BACKEND=diffusion needs SKUFORGE_DIFFUSION_MODEL"),
    ],
)
def test_a_stack_whose_model_is_not_set_is_refused_before_anything_starts(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    backend_env: str | None,
    message: str,
) -> None:
    # Every service started first (minutes with Kafka and Triton); then Triton, or the trainer last of
    # the stages, failed in its log for want of a model, and the whole stack was stopped again.
    for name in ("SKUFORGE_LORA_MODEL", "SKUFORGE_DIFFUSION_MODEL", "SKUFORGE_GENERATION_BACKEND_MIX"):
        monkeypatch.delenv(name, raising=False)
    if backend_env is None:
        monkeypatch.delenv("SKUFORGE_GENERATION_BACKEND", raising=False)
    else:
        monkeypatch.setenv("SKUFORGE_GENERATION_BACKEND", backend_env)

    def starts_the_stack(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("started a stack with no model to run")

    monkeypatch.setattr(devstack.up, "build_config", starts_the_stack)
    with pytest.raises(SystemExit) as exited:
        main(["--workdir", str(tmp_path / "up"), *argv])
    assert exited.value.code == 2
    assert f"skuforge up: error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "up").exists()  # nothing started, nothing written


def test_stop_kills_grandchildren_that_left_the_group_and_ignore_sigterm(tmp_path: Path) -> None:
    # The child starts a grandchild in a new session (as PyTriton and the broker launcher do) that
    # ignores SIGTERM, writes its pid, then waits to be told to stop.
    grandchild = tmp_path / "grandchild.pid"
    spec = python_child(
        tmp_path,
        "parent",
        f"""
        import subprocess, sys, time
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
        child = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
        open({str(grandchild)!r}, "w").write(str(child.pid))
        print("ready", flush=True)
        time.sleep(600)
        """,
        ready=lambda: grandchild.exists() and grandchild.read_text() != "",
        ready_timeout_s=30,
    )
    lines: list[str] = []
    supervisor = Supervisor([spec], grace_s=2, report=lines.append)
    try:
        assert supervisor.start()
        parent_pid = supervisor["parent"].pid
        grandchild_pid = int(grandchild.read_text())
        assert parent_pid and alive(parent_pid) and alive(grandchild_pid)
        assert os.getpgid(grandchild_pid) != os.getpgid(parent_pid)  # out of reach of killpg
    finally:
        supervisor.stop()
    assert not alive(parent_pid)
    assert not alive(grandchild_pid)
    assert processes_with_env(SUPERVISOR_ID_ENV, supervisor.supervisor_id) == []
    assert "ready" in (tmp_path / "parent.log").read_text()
    assert any("leftover" in line for line in lines)


def counting_runs(path: Path) -> str:
    """Child code that counts its runs in ``path``; ``n`` is the number of runs before this one."""
    return f"""
        import time
        path = {str(path)!r}
        try:
            n = int(open(path).read())
        except FileNotFoundError:
            n = 0
        open(path, "w").write(str(n + 1))
        """


def test_a_dead_service_is_reported_and_restarted_with_growing_back_off(tmp_path: Path) -> None:
    counter = tmp_path / "starts"
    spec = python_child(
        tmp_path,
        "flaky",
        counting_runs(counter)
        + """
        if n in (1, 2):
            raise SystemExit(3)  # the 2nd and 3rd runs die at once
        time.sleep(600)
        """,
        ready=counter.exists,
    )
    lines: list[str] = []
    supervisor = Supervisor(
        [spec], grace_s=2, backoff_initial_s=0.2, backoff_max_s=5, stable_after_s=60, report=lines.append
    )
    try:
        assert supervisor.start()
        state = supervisor["flaky"]
        first_pid = state.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)

        def settled() -> bool:
            supervisor.check_once()
            # The 4th run's count too: its ready check (the counter exists) passes from the 1st run on,
            # so the run could be "ready" before it wrote its count (the test failed so, now and then).
            return (
                state.restarts == 3
                and state.pid is not None
                and state.status == "ready"
                and counter.read_text() == "4"
            )

        wait_for("three restarts and a 4th run", settled, 30)
        assert state.pid != first_pid
        backoffs = [line for line in lines if "restarting in" in line]
        assert len(backoffs) == 3
        assert "exited with code -9" in backoffs[0] and "exited with code 3" in backoffs[1]
        assert state.backoff_s == pytest.approx(0.8)  # 0.2, 0.4, 0.8: doubled while it kept dying
    finally:
        supervisor.stop()
    assert processes_with_env(SUPERVISOR_ID_ENV, supervisor.supervisor_id) == []


def test_a_ready_check_that_raises_counts_as_not_ready_and_is_said_once(tmp_path: Path) -> None:
    # Before: the exception went out of start() (start-up failed) or out of the watch loop, which
    # stopped the whole stack.
    raises_left = [3]

    def ready() -> bool:
        if raises_left[0] > 0:
            raises_left[0] -= 1
            raise ValueError("the answer was not JSON")
        return True

    spec = python_child(tmp_path, "odd", "import time; time.sleep(600)", ready=ready)
    lines: list[str] = []
    supervisor = Supervisor([spec], grace_s=2, backoff_initial_s=0.2, report=lines.append)
    said = "odd: its ready check failed (ValueError: the answer was not JSON); not ready yet"
    try:
        assert supervisor.start()
        state = supervisor["odd"]
        assert state.status == "ready" and lines.count(said) == 1
        first_pid = state.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        raises_left[0] = 3

        def ready_again() -> bool:
            supervisor.check_once()
            return state.restarts == 1 and state.status == "ready"

        wait_for("the restarted service to be ready", ready_again, 30)
        assert raises_left[0] == 0 and lines.count(said) == 2  # once more, for the restarted one
        assert "its ready check failed (ValueError: the answer was not JSON)" in spec.log_path.read_text()
    finally:
        supervisor.stop()
    assert processes_with_env(SUPERVISOR_ID_ENV, supervisor.supervisor_id) == []


def test_a_service_stuck_unready_at_start_is_killed_and_started_again(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    spec = python_child(
        tmp_path,
        "stuck",
        counting_runs(runs)
        + """
        time.sleep(600)  # alive either way; only the second run counts as ready
        """,
        ready=lambda: runs.exists() and runs.read_text() == "2",
        ready_timeout_s=3,
        start_attempts=2,
    )
    lines: list[str] = []
    supervisor = Supervisor([spec], grace_s=2, report=lines.append)
    try:
        assert supervisor.start()
        assert supervisor["stuck"].restarts == 1 and supervisor["stuck"].status == "ready"
        assert any("not ready within 3s; killing it and starting it again" in line for line in lines)
    finally:
        supervisor.stop()
    assert processes_with_env(SUPERVISOR_ID_ENV, supervisor.supervisor_id) == []


def test_a_service_that_dies_while_starting_fails_start_up_with_its_log(tmp_path: Path) -> None:
    first = python_child(tmp_path, "first", "import time; time.sleep(600)")
    broken = python_child(
        tmp_path, "broken", "print('no config here'); raise SystemExit(2)", ready=lambda: False
    )
    never = python_child(tmp_path, "never", "import time; time.sleep(600)")
    supervisor = Supervisor([first, broken, never], grace_s=2, report=lambda _: None)
    try:
        with pytest.raises(SupervisorError, match=r"broken exited with code 2[\s\S]*no config here"):
            supervisor.start()
        assert supervisor["never"].process is None  # nothing after the failure was started
    finally:
        supervisor.stop()
    assert processes_with_env(SUPERVISOR_ID_ENV, supervisor.supervisor_id) == []


# --------------------------------------------------------------------------------------------------
# the real stack
# --------------------------------------------------------------------------------------------------


def read_stack(workdir: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads((workdir / "stack.json").read_text())
        return state
    except (OSError, ValueError):
        return {}


@pytest.mark.slow
@pytest.mark.kafka
def test_up_starts_everything_with_replicas_restarts_a_killed_stage_and_ctrl_c_leaves_nothing(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "stack"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKUFORGE_")}
    env["SKUFORGE_LOG_FORMAT"] = "text"
    out_path = tmp_path / "up.out"
    with out_path.open("wb") as out:
        up = subprocess.Popen(
            [
                *(sys.executable, "-m", "skuforge_cli", "up", "--workdir", str(workdir), "--ports", "free"),
                *("--replicas", "matting=2"),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pids: set[int] = set()
    try:

        def ready() -> bool:
            if up.poll() is not None:
                raise AssertionError(f"skuforge up exited with {up.returncode}:\n{out_path.read_text()}")
            return read_stack(workdir).get("state") == "ready"

        wait_for("the stack to be ready", ready, 420)
        stack = read_stack(workdir)
        services = stack["services"]
        assert set(services) == {"kafka", "topics", "triton", *STAGES, "matting-2", "console"}
        assert services["topics"]["status"] == "done"
        for name, service in services.items():
            if name != "topics":
                assert service["status"] == "ready" and alive(service["pid"]), name
                pids.add(service["pid"])
            assert Path(service["log"]).is_file(), name
        output = out_path.read_text()
        order = [output.index(f"{name}: ready") for name in ("kafka", "triton", *STAGES, "console")]
        assert order == sorted(order)  # readiness in order: broker, Triton, stages, console
        assert "login demo / " in output
        for stage in [*STAGES, "matting-2"]:
            with urllib.request.urlopen(services[stage]["metrics"], timeout=10) as response:
                metrics = response.read().decode()
            assert "skuforge_messages_total" in metrics or "skuforge_handler_seconds" in metrics
        # The generator server's own /metrics (the scene library's counters), beside Triton's.
        server_metrics = f"http://127.0.0.1:{stack['ports']['generator_server_metrics']}/metrics"
        with urllib.request.urlopen(server_metrics, timeout=10) as response:
            assert "# TYPE skuforge_generator_scenes_skipped_total counter" in response.read().decode()

        # The two matting replicas are two static members of one group, sharing its partitions.
        def replicas_share_matting() -> bool:
            held = group_assignment(
                load_settings(kafka_bootstrap=stack["kafka_bootstrap"]), "skuforge.matting"
            )
            return sorted(held) == ["matting-1", "matting-2"] and all(held.values())

        wait_for("matting-1 and matting-2 to share the matting partitions", replicas_share_matting, 60)

        # A stage that dies is reported and comes back.
        gate_pid = services["gate"]["pid"]
        os.kill(gate_pid, signal.SIGKILL)

        def gate_back() -> bool:
            gate = read_stack(workdir)["services"]["gate"]
            return gate["restarts"] == 1 and gate["status"] == "ready" and gate["pid"] not in (None, gate_pid)

        wait_for("the gate to be restarted and ready", gate_back, 180)
        pids.add(read_stack(workdir)["services"]["gate"]["pid"])
        assert "gate: exited with code -9" in out_path.read_text()
        supervisor_id = read_stack(workdir)["supervisor_id"]
        family = processes_with_env(SUPERVISOR_ID_ENV, supervisor_id)
        assert len(family) > len(pids)  # Triton's server and stubs, the JVM... are in the family too

        # Ctrl-C: everything stops, nothing is left.
        os.kill(up.pid, signal.SIGINT)
        assert up.wait(timeout=240) == 0, out_path.read_text()
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
    assert [pid for pid in pids | set(family) if alive(pid)] == []
    assert processes_with_env(SUPERVISOR_ID_ENV, supervisor_id) == []
    assert processes_mentioning(str(workdir)) == []
    assert read_stack(workdir)["state"] == "stopped"
    assert "stopped" in out_path.read_text().splitlines()[-1]


@pytest.mark.parametrize(
    ("flag", "model_env", "gpu", "expected"),
    [
        (None, None, False, False),
        (None, "/models/sd15-inpaint", False, False),  # training on a CPU: days per adapter
        (None, "/models/sd15-inpaint", True, True),
        (None, None, True, False),  # nothing to train on
        (True, None, False, True),  # --with-trainer
    ],
)
def test_the_trainer_runs_with_a_gpu_and_a_model_or_when_asked(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flag: bool | None,
    model_env: str | None,
    gpu: bool,
    expected: bool,
) -> None:
    monkeypatch.delenv("SKUFORGE_LORA_MODEL", raising=False)
    if model_env is None:
        monkeypatch.delenv("SKUFORGE_DIFFUSION_MODEL", raising=False)
    else:
        monkeypatch.setenv("SKUFORGE_DIFFUSION_MODEL", model_env)
    monkeypatch.setattr(devstack.up, "_cuda_available", lambda: gpu)
    config = build_config(tmp_path, ports_mode="free", with_trainer=flag)
    names = [spec.name for spec in devstack.up.build_specs(config)]
    assert ("lora-trainer" in names) is expected
    if expected:  # after every stage of the pipeline, before the console
        assert names.index("lora-trainer") == names.index("trainstore") + 1
        assert "lora-trainer" in devstack.up.metrics_urls(config)


def test_another_users_running_stack_is_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before, os.kill(pid, 0)'s PermissionError (the supervisor is another user's) read as "gone": a
    # demo pointed at that stack tried to start its own in the same workdir.
    state = {"state": "ready", "supervisor_pid": os.getpid(), "started_at": time.time()}
    (tmp_path / "stack.json").write_text(json.dumps(state))

    def not_yours(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(devstack.up.os, "kill", not_yours)
    assert read_state(tmp_path) == state


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # Before: nan or inf a ValueError/OverflowError traceback, once the whole stack was up.
        (
            ["--with-prometheus", "--scrape-interval-s", "nan"],
            "--scrape-interval-s: must be a number from 0.5",
        ),
        # Before: -1 killed every service at once with SIGKILL; nan never fell back to it.
        (["--grace-s", "-1"], "--grace-s: must be a number from 1 to 3600, got -1"),
        # Before: accepted; a service deaf to SIGTERM then held the stop (and its ports) for ever.
        (["--grace-s", "1e9"], "--grace-s: must be a number from 1 to 3600, got 1e9"),
        # Before: accepted; SIGTERM and SIGKILL came together, no stop was graceful.
        (["--grace-s", "0.001"], "--grace-s: must be a number from 1 to 3600, got 0.001"),
    ],
)
def test_up_refuses_numbers_it_cannot_use(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A workdir `up` refuses too, once it has read its options: a number it wrongly accepts fails the
    # test there, rather than starting a whole stack.
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--workdir", str(tmp_path / "a-file" / "up")])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_the_broker_command_refuses_a_port_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    from devstack.broker import main as broker_main

    with pytest.raises(SystemExit) as exited:
        broker_main(["start", "--port", "99999"])  # before: OverflowError from bind()
    assert exited.value.code == 2
    assert "--port: must be from 1 to 65535, got 99999" in capsys.readouterr().err


def test_a_service_that_exits_takes_what_it_left_in_its_group_with_it(tmp_path: Path) -> None:
    """Once the leader was reaped, os.getpgid(pid) raised and nothing was signalled: its workers kept
    running (holding ports) beside the restarted service, and survived the stop's SIGTERM."""
    worker = tmp_path / "worker.pid"
    spec = python_child(
        tmp_path,
        "leader",
        f"""
        import os, subprocess, sys
        if not os.path.exists({str(worker)!r}):
            code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
            child = subprocess.Popen([sys.executable, "-c", code])  # in the leader's group
            open({str(worker)!r}, "w").write(str(child.pid))
            sys.exit(3)
        import time
        time.sleep(600)
        """,
        ready_timeout_s=30,
    )
    supervisor = Supervisor([spec], grace_s=2, report=lambda line: None)
    try:
        assert supervisor.start()
        deadline = time.monotonic() + 30
        while not (worker.exists() and worker.read_text()):
            assert time.monotonic() < deadline, "the leader never started its worker"
            time.sleep(0.1)
        worker_pid = int(worker.read_text())
        while supervisor["leader"].last_exit_code is None:
            assert time.monotonic() < deadline, "the leader's exit was not seen"
            supervisor.check_once()
            time.sleep(0.1)
        while alive(worker_pid):
            assert time.monotonic() < deadline, "the exited leader's worker still runs"
            time.sleep(0.1)
    finally:
        supervisor.stop()


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--prometheus-rules", "my-alerts.yml"], "--prometheus-rules"),
        (["--scrape-interval-s", "1"], "--scrape-interval-s"),
    ],
)
def test_a_prometheus_option_without_with_prometheus_is_a_usage_error(
    argv: list[str],
    option: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Before: the option was ignored and the stack started with no Prometheus at all.
    def starts_the_stack(*args: object, **kwargs: object) -> None:
        raise AssertionError("started the stack without the Prometheus asked for")

    monkeypatch.setattr("devstack.up.Supervisor", starts_the_stack)
    with pytest.raises(SystemExit) as exited:
        main(["--workdir", str(tmp_path / "stack"), "--ports", "free", *argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"skuforge up: error: {option} is for --with-prometheus's Prometheus; add --with-prometheus" in err
