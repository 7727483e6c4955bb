"""``skuforge up`` and ``skuforge demo`` when the terminal goes away, a port is taken, or a log grows.

No real Kafka here: the supervisor tests use small Python children (one listening on a free port, as a
stage's /metrics does), the port tests bind the port themselves, and the demo test stands a fake
``skuforge up`` in for the real one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import devstack.demo.demo
import devstack.supervisor
import devstack.up
from devstack.broker import LocalKafka, free_port, port_in_use
from devstack.prometheus import stack_prometheus
from devstack.supervisor import SUPERVISOR_ID_ENV, ServiceSpec, Supervisor, processes_with_env
from devstack.up import DEFAULT_PORTS, build_config, build_specs, main, resolve_ports
from shared.signals import stopped_as_interrupt
from tests.support.polling import wait_for
from tests.support.signals import as_from_a_shell

REPO_ROOT = Path(__file__).resolve().parent.parent


def alive(pid: int) -> bool:
    """The pid runs and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def kill_if_alive(pid: int | None) -> None:
    if pid is not None and alive(pid):
        os.kill(pid, signal.SIGKILL)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------
# finding 1: a supervisor hung up or killed takes its services with it
# --------------------------------------------------------------------------------------------------

# A supervisor (as `skuforge up` runs one) of one service that listens on a port, as every stage does.
SUPERVISOR_SCRIPT = """
import sys
from pathlib import Path
from typing import Any
from devstack.supervisor import ServiceSpec, Supervisor

port, workdir = int(sys.argv[1]), Path(sys.argv[2])
pid_file = workdir / "listener.pid"
listener = (
    "import os, socket, time\\n"
    "sock = socket.socket()\\n"
    f"sock.bind(('127.0.0.1', {port}))\\n"
    "sock.listen()\\n"
    f"open({str(pid_file)!r} + '.tmp', 'w').write(str(os.getpid()))\\n"
    f"os.replace({str(pid_file)!r} + '.tmp', {str(pid_file)!r})\\n"
    "time.sleep(600)\\n"
)
spec = ServiceSpec(
    name="listener",
    argv=[sys.executable, "-c", listener],
    log_path=workdir / "listener.log",
    ready=pid_file.exists,
    ready_timeout_s=60,
)
supervisor = Supervisor([spec], grace_s=2, report=lambda line: print(line, flush=True))
sys.exit(supervisor.run(on_ready=lambda: (workdir / "ready").write_text("ready")))
"""


@dataclass
class SupervisedListener:
    """A supervisor script run by a test, its one service ready: what the test stops and checks."""

    supervisor: subprocess.Popen[bytes]
    out_path: Path  # the supervisor's stdout and stderr
    port: int  # the service's
    listener_pid: int


@contextlib.contextmanager
def supervised_listener(tmp_path: Path, script: str, **popen: Any) -> Iterator[SupervisedListener]:
    """Runs ``script`` (``SUPERVISOR_SCRIPT`` or a variant) in a session of its own, so the test's
    signals stay its own, and yields once its listener holds its port; then kills what is left."""
    port = free_port()
    (tmp_path / "supervise.py").write_text(script)
    out_path = tmp_path / "supervisor.out"
    with out_path.open("wb") as out:
        supervisor = subprocess.Popen(
            [sys.executable, str(tmp_path / "supervise.py"), str(port), str(tmp_path)],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},  # this checkout's supervisor
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **popen,
        )
    listener_pid: int | None = None
    try:
        wait_for(
            "the supervisor's service to be ready",
            lambda: (tmp_path / "ready").exists() or supervisor.poll() is not None,
            60,
        )
        assert (tmp_path / "ready").exists(), out_path.read_text()
        listener_pid = read_pid(tmp_path / "listener.pid")
        assert listener_pid is not None and alive(listener_pid) and port_in_use(port)
        yield SupervisedListener(supervisor, out_path, port, listener_pid)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
        kill_if_alive(listener_pid)


@pytest.mark.parametrize("stop_signal", [signal.SIGHUP, signal.SIGKILL], ids=["SIGHUP", "SIGKILL"])
def test_a_supervisor_hung_up_or_killed_leaves_no_service_holding_its_port(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    # SIGHUP as a shell gives it: a test runner under nohup would pass its ignored SIGHUP on.
    with supervised_listener(tmp_path, SUPERVISOR_SCRIPT, preexec_fn=as_from_a_shell) as run:
        os.kill(run.supervisor.pid, stop_signal)
        run.supervisor.wait(timeout=60)

        wait_for(
            f"the service (pid {run.listener_pid}) to be gone and port {run.port} free after "
            f"{stop_signal.name} to its supervisor",
            lambda: not alive(run.listener_pid) and not port_in_use(run.port),
            30,
        )
        if stop_signal == signal.SIGHUP:  # a clean stop, said as such, not a death by signal
            assert run.supervisor.returncode == 0, run.out_path.read_text()
            assert "received SIGHUP; stopping everything" in run.out_path.read_text()


def under_nohup() -> None:
    """A ``preexec_fn``: signals as a shell gives them, SIGHUP ignored, as `nohup skuforge up &` starts it."""
    as_from_a_shell()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def test_a_supervisor_started_under_nohup_keeps_its_stack_when_hung_up(tmp_path: Path) -> None:
    """The supervisor put its stop over the SIGHUP nohup ignores: `nohup skuforge up &`, then logging
    out, stopped the whole stack nohup was there to keep."""
    with supervised_listener(tmp_path, SUPERVISOR_SCRIPT, preexec_fn=under_nohup) as run:
        os.kill(run.supervisor.pid, signal.SIGHUP)
        os.kill(run.supervisor.pid, signal.SIGTERM)  # an ignored SIGHUP is dropped; this one stops it
        run.supervisor.wait(timeout=60)
        said = run.out_path.read_text()
        assert "received SIGHUP" not in said, said
        assert "received SIGTERM; stopping everything" in said, said


def test_a_report_to_a_hung_up_terminal_does_not_cut_the_stop_short(tmp_path: Path) -> None:
    # After SIGHUP, printing to the closed terminal fails with EIO; the stop must still reach everything.
    def hung_up_terminal(line: str) -> None:
        if "stopping" in line:
            raise OSError(5, "Input/output error")

    script = tmp_path / "sleeper.py"
    script.write_text("import time; time.sleep(600)\n")
    specs = [
        ServiceSpec(name=name, argv=[sys.executable, str(script)], log_path=tmp_path / f"{name}.log")
        for name in ("first", "second")
    ]
    supervisor = Supervisor(specs, grace_s=2, report=hung_up_terminal)
    pids: list[int] = []
    try:
        assert supervisor.start()
        pids = [pid for pid in (supervisor["first"].pid, supervisor["second"].pid) if pid is not None]
        assert len(pids) == 2
        supervisor.stop()
        assert not any(alive(pid) for pid in pids)
        assert processes_with_env(SUPERVISOR_ID_ENV, supervisor.supervisor_id) == []
    finally:
        for pid in pids:
            kill_if_alive(pid)


def test_a_state_file_that_cannot_be_written_does_not_cut_the_stop_short(tmp_path: Path) -> None:
    # With the disk full, writing stack.json raised in on_change at the first "stopped": one service was
    # stopped, the others left running, and `skuforge up` ended in a traceback.
    def full_disk(supervisor: Supervisor) -> None:
        if supervisor.stopping.is_set():
            raise OSError(28, "No space left on device")

    script = tmp_path / "sleeper.py"
    script.write_text("import time; time.sleep(600)\n")
    specs = [
        ServiceSpec(name=name, argv=[sys.executable, str(script)], log_path=tmp_path / f"{name}.log")
        for name in ("first", "second", "third")
    ]
    lines: list[str] = []
    supervisor = Supervisor(specs, grace_s=2, report=lines.append, on_change=full_disk)
    pids: list[int] = []
    try:
        assert supervisor.start()
        pids = [state.pid for state in supervisor.services if state.pid is not None]
        assert len(pids) == 3
        supervisor.stop()
        assert not any(alive(pid) for pid in pids)
        assert sum("cannot record the stack's state" in line for line in lines) == 1
    finally:
        for pid in pids:
            kill_if_alive(pid)


# --------------------------------------------------------------------------------------------------
# finding 2: --ports default refuses taken ports; kafka is ready only as this stack's own broker
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def held_console_port() -> Iterator[int]:
    """The console's documented port, held by "another program" (skipped if something holds it)."""
    port = DEFAULT_PORTS["console"]
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        pytest.skip(f"port {port} is taken on this machine already")
    sock.listen()
    try:
        yield port
    finally:
        sock.close()


def test_ports_default_refuses_a_taken_port_naming_it_and_what_to_do(
    tmp_path: Path, held_console_port: int
) -> None:
    try:
        ports = resolve_ports(tmp_path, "default")
    except devstack.up.PortsInUse as exc:
        message = str(exc)
    else:
        pytest.fail(f"--ports default handed out console port {ports['console']}, which is taken")
    assert f"console {held_console_port}" in message
    assert "--ports auto" in message


def test_up_with_ports_default_and_a_taken_port_fails_at_once_starting_nothing(
    tmp_path: Path,
    held_console_port: int,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_stack(*args: object, **kwargs: object) -> None:
        raise AssertionError("a stack was started although one of its ports is taken")

    monkeypatch.setattr(devstack.up, "Supervisor", no_stack)
    workdir = tmp_path / "stack"
    assert main(["--workdir", str(workdir), "--ports", "default"]) == 1
    err = capsys.readouterr().err
    assert f"console {held_console_port}" in err and "--ports auto" in err
    assert not (workdir / "stack.json").exists()  # nothing was started


def test_a_kafka_on_the_port_that_is_not_this_stacks_broker_does_not_make_it_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another broker answers on the stack's Kafka port; this stack's own broker does not run.
    monkeypatch.setattr(devstack.up, "kafka_ready", lambda bootstrap: True)
    config = build_config(tmp_path, ports_mode="free")
    kafka = next(spec for spec in build_specs(config) if spec.name == "kafka")
    assert kafka.ready is not None
    assert not kafka.ready()
    # Once the broker of <workdir>/kafka runs (and answers), it is.
    monkeypatch.setattr(LocalKafka, "is_running", lambda self: self.data_dir == tmp_path.resolve() / "kafka")
    assert kafka.ready()


# --------------------------------------------------------------------------------------------------
# finding 3: the demo stops the stack it started on SIGTERM and SIGHUP as on Ctrl-C
# --------------------------------------------------------------------------------------------------

# Stands in for `python -m skuforge_cli up` (found first: it is in the child's working directory):
# says it is ready in stack.json, then waits for the demo's SIGINT and notes it got one.
FAKE_UP = """
import json, os, signal, sys, time
workdir = sys.argv[sys.argv.index("--workdir") + 1]

def stop(signum, frame):
    open(os.path.join(workdir, "fake-up.stopped"), "w").write(signal.Signals(signum).name)
    sys.exit(0)

signal.signal(signal.SIGINT, stop)
state = {"state": "ready", "supervisor_pid": os.getpid(), "started_at": time.time(), "env": {}}
open(os.path.join(workdir, "stack.tmp"), "w").write(json.dumps(state))
os.replace(os.path.join(workdir, "stack.tmp"), os.path.join(workdir, "stack.json"))
time.sleep(600)
"""

DEMO_DRIVER = """
import sys, time
from pathlib import Path
from typing import Any
from devstack.demo.demo import stack

workdir = Path(sys.argv[1])
with stack(workdir, variants=1, keep_running=False):
    (workdir / "entered").write_text("yes")
    time.sleep(600)
"""


@dataclass
class DemoWithFakeUp:
    """A demo driver in a child process whose ``skuforge up`` is ``FAKE_UP``; its output in ``out_path``."""

    process: subprocess.Popen[bytes]
    workdir: Path
    out_path: Path

    def entered(self) -> int:
        """Waits until the driver is inside the stack; the fake stack's pid."""
        wait_for(
            "the demo to enter the stack",
            lambda: (self.workdir / "entered").exists() or self.process.poll() is not None,
            60,
        )
        assert (self.workdir / "entered").exists(), self.out_path.read_text()
        return int(json.loads((self.workdir / "stack.json").read_text())["supervisor_pid"])


@contextlib.contextmanager
def demo_with_fake_up(tmp_path: Path, driver_text: str, fake_up: str = FAKE_UP) -> Iterator[DemoWithFakeUp]:
    """Runs ``driver_text`` (given the workdir as its argument) as a shell would, with ``fake_up`` found
    for ``python -m skuforge_cli up``; kills what is left of both at the end."""
    fake_root = tmp_path / "fake-root"
    (fake_root / "skuforge_cli").mkdir(parents=True)
    (fake_root / "skuforge_cli" / "__init__.py").write_text("")
    (fake_root / "skuforge_cli" / "__main__.py").write_text(textwrap.dedent(fake_up))
    driver = tmp_path / "driver" / "demo_driver.py"
    driver.parent.mkdir()
    driver.write_text(driver_text)
    workdir = tmp_path / "stack"
    out_path = tmp_path / "demo.out"
    with out_path.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, str(driver), str(workdir)],
            cwd=fake_root,  # the demo's `python -m skuforge_cli up` finds the fake first
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},  # this checkout's demo, not the installed one
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=as_from_a_shell,
        )
    try:
        yield DemoWithFakeUp(demo, workdir, out_path)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        kill_if_alive(read_pid_in_state(workdir))


def read_pid_in_state(workdir: Path) -> int | None:
    """The supervisor pid the (fake) stack wrote in stack.json; None before it did."""
    try:
        return int(json.loads((workdir / "stack.json").read_text())["supervisor_pid"])
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_the_demo_stops_the_stack_it_started_when_terminated_or_hung_up(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    with demo_with_fake_up(tmp_path, DEMO_DRIVER) as demo:
        fake_up_pid = demo.entered()

        os.kill(demo.process.pid, stop_signal)
        demo.process.wait(timeout=60)

        assert (demo.workdir / "fake-up.stopped").exists(), (
            f"the stack the demo started was left running after {stop_signal.name} to the demo; "
            f"demo output:\n{demo.out_path.read_text()}"
        )
        assert (demo.workdir / "fake-up.stopped").read_text() == "SIGINT"
        wait_for("the fake stack to exit", lambda: not alive(fake_up_pid), 30)
        assert "stopping the stack" in demo.out_path.read_text()


# A stack slow to stop, as `skuforge up` is while a service waits out its --grace-s: the first SIGINT
# only starts its stop; a second one (which has `up` kill what is left) ends it.
FAKE_UP_SLOW_TO_STOP = """
import json, os, signal, sys, time
workdir = sys.argv[sys.argv.index("--workdir") + 1]

def stop(signum, frame):
    if os.path.exists(os.path.join(workdir, "fake-up.stopping")):
        open(os.path.join(workdir, "fake-up.hurried"), "w").write("yes")
        sys.exit(0)
    open(os.path.join(workdir, "fake-up.stopping"), "w").write("yes")

signal.signal(signal.SIGINT, stop)
state = {"state": "ready", "supervisor_pid": os.getpid(), "started_at": time.time(), "env": {}}
open(os.path.join(workdir, "stack.tmp"), "w").write(json.dumps(state))
os.replace(os.path.join(workdir, "stack.tmp"), os.path.join(workdir, "stack.json"))
while True:
    time.sleep(600)
"""


def test_a_second_ctrl_c_while_the_demo_stops_its_stack_has_the_stack_kill_what_is_left(
    tmp_path: Path,
) -> None:
    """The second Ctrl-C ended the demo's wait and the demo, and the stack it started was left stopping
    in the background, every service waiting out its grace, with no terminal to Ctrl-C again: not what
    a second Ctrl-C does to `skuforge up` itself."""
    with demo_with_fake_up(tmp_path, DEMO_DRIVER, FAKE_UP_SLOW_TO_STOP) as demo:
        fake_up_pid = demo.entered()
        os.kill(demo.process.pid, signal.SIGINT)
        wait_for("the demo to stop the stack", lambda: (demo.workdir / "fake-up.stopping").exists(), 60)
        os.kill(demo.process.pid, signal.SIGINT)
        demo.process.wait(timeout=60)
        assert (demo.workdir / "fake-up.hurried").exists(), (
            f"the stack got no second SIGINT; demo output:\n{demo.out_path.read_text()}"
        )
        wait_for("the fake stack to exit", lambda: not alive(fake_up_pid), 30)


# The demo's main with --keep-running, but for its flow: the run's own exit code is 0 (every image decided).
KEEP_RUNNING_DRIVER = """
import sys
from pathlib import Path
from devstack.demo.demo import stack

def demo() -> int:
    workdir = Path(sys.argv[1])
    with stack(workdir, variants=1, keep_running=True):
        (workdir / "entered").write_text("yes")
        return 0

sys.exit(demo())
"""


def kept_running(demo: DemoWithFakeUp) -> int:
    """Waits until the driver keeps the fake stack running after its run; the stack's pid."""
    fake_up_pid = demo.entered()
    wait_for(
        "the demo to keep the stack running",
        lambda: "keeps running" in demo.out_path.read_text() or demo.process.poll() is not None,
        60,
    )
    assert demo.process.poll() is None, demo.out_path.read_text()
    return fake_up_pid


@pytest.mark.parametrize(
    "stop_signal", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["Ctrl-C", "SIGTERM", "SIGHUP"]
)
def test_a_requested_stop_of_a_kept_stack_exits_with_the_runs_own_code(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    with demo_with_fake_up(tmp_path, KEEP_RUNNING_DRIVER) as demo:
        kept_running(demo)
        os.kill(demo.process.pid, stop_signal)
        assert demo.process.wait(timeout=60) == 0, demo.out_path.read_text()
        assert (demo.workdir / "fake-up.stopped").read_text() == "SIGINT"  # the stack was stopped


def test_a_kept_stack_that_dies_by_itself_fails_the_demo(tmp_path: Path) -> None:
    """The demo exited 0, saying nothing, when the stack it kept running for the console was killed (the
    OOM killer) or failed: as if the user had stopped it."""
    with demo_with_fake_up(tmp_path, KEEP_RUNNING_DRIVER) as demo:
        os.kill(kept_running(demo), signal.SIGKILL)
        assert demo.process.wait(timeout=60) == 1, demo.out_path.read_text()
        said = demo.out_path.read_text()
        assert "skuforge up exited with code -9 (killed by SIGKILL)" in said, said
        assert str(demo.workdir / "up.out") in said, said


def test_signals_as_interrupt_raises_keyboard_interrupt_and_puts_the_handlers_back() -> None:
    # The demo's (as ingest's and dlq replay's) shared.signals.stopped_as_interrupt, with both signals as
    # a shell gives them: a runner under nohup ignores SIGHUP, which the block rightly leaves ignored.
    runner = {sig: signal.signal(sig, signal.SIG_DFL) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        before = {sig: signal.getsignal(sig) for sig in runner}
        for sig in before:
            with pytest.raises(KeyboardInterrupt), stopped_as_interrupt():
                os.kill(os.getpid(), sig)
                time.sleep(5)  # the handler runs at the next bytecode; never reached
        assert {sig: signal.getsignal(sig) for sig in before} == before
    finally:
        for sig, handler in runner.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------------------------------
# finding 4: logs are rotated instead of growing without bound
# --------------------------------------------------------------------------------------------------


def test_a_log_over_the_limit_is_moved_to_dot_1_when_opened(tmp_path: Path) -> None:
    log_path = tmp_path / "svc.log"
    log_path.write_bytes(b"old run\n" * 200)  # 1600 bytes
    (tmp_path / "svc.log.1").write_bytes(b"older run\n")
    with devstack.supervisor.open_log(log_path, max_bytes=1000) as log:
        log.write(b"new run\n")
    assert log_path.read_bytes() == b"new run\n"
    assert (tmp_path / "svc.log.1").read_bytes() == b"old run\n" * 200  # the older .1 is replaced
    with devstack.supervisor.open_log(log_path, max_bytes=1000) as log:  # under the limit: appended to
        log.write(b"next run\n")
    assert log_path.read_bytes() == b"new run\nnext run\n"


def test_a_crash_looping_service_log_is_rotated_between_restarts(tmp_path: Path) -> None:
    log_path = tmp_path / "crashy.log"
    log_path.write_bytes(b"x" * 5000)  # left by an earlier run
    script = tmp_path / "crashy.py"
    # Each run writes about 600 bytes (a traceback's worth) and dies.
    script.write_text("import sys\nprint('Traceback: ' + 'y' * 600, flush=True)\nsys.exit(3)\n")
    spec = ServiceSpec(name="crashy", argv=[sys.executable, str(script)], log_path=log_path)
    supervisor = Supervisor(
        [spec],
        grace_s=2,
        backoff_initial_s=0.05,
        backoff_max_s=0.05,
        report=lambda _: None,
        log_max_bytes=1000,
    )
    try:
        assert supervisor.start()
        state = supervisor["crashy"]

        def restarted_often() -> bool:
            supervisor.check_once()
            return state.restarts >= 6

        wait_for("six restarts", restarted_often, 60)
        assert (tmp_path / "crashy.log.1").exists()
        assert b"x" * 5000 not in (tmp_path / "crashy.log.1").read_bytes()  # rotated more than once
        assert log_path.stat().st_size <= 1000 + 1000  # the limit, plus the one run written past it
    finally:
        supervisor.stop()
    assert processes_with_env(SUPERVISOR_ID_ENV, supervisor.supervisor_id) == []


def test_prometheus_moves_its_log_aside_when_it_has_grown_past_the_limit(tmp_path: Path) -> None:
    config = build_config(tmp_path / "stack", ports_mode="free")
    prometheus = stack_prometheus(tmp_path / "prometheus", config.ports, port=free_port())
    big = devstack.supervisor.LOG_MAX_BYTES + 1
    with prometheus.log_path.open("wb") as log:
        log.truncate(big)  # sparse: over the limit without writing 50 MB
    try:
        prometheus.start(timeout_s=60)
    finally:
        prometheus.stop()
    assert prometheus.log_path.with_name(prometheus.log_path.name + ".1").stat().st_size == big
    assert 0 < prometheus.log_path.stat().st_size < big  # a fresh log, with this run's lines


def test_stack_json_carries_no_kafka_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # It carries the caller's SKUFORGE_* settings for the stack's clients, and is readable by another
    # user whose demo uses the stack: a Kafka SASL password was in it.
    from devstack.up import STATE_FILE, build_config, write_state

    monkeypatch.setenv("SKUFORGE_KAFKA_SASL_PASSWORD", "hunter2-hunter2")
    monkeypatch.setenv("SKUFORGE_KAFKA_SASL_USERNAME", "stack-user")
    config = build_config(tmp_path, kafka_bootstrap="127.0.0.1:9", backends=["composite"], with_trainer=False)
    write_state(config, Supervisor([], report=lambda line: None), "starting")
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["env"]["SKUFORGE_KAFKA_SASL_USERNAME"] == "stack-user"  # what a client needs
    assert "hunter2-hunter2" not in (tmp_path / STATE_FILE).read_text()


def test_services_and_clients_of_a_stack_with_its_own_broker_reach_it_whatever_the_shell_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shell's protocol, SASL login and CA (set for a cluster elsewhere) went on to every service
    # with only the bootstrap replaced: each one failed to bootstrap from the stack's PLAINTEXT broker.
    from devstack.up import STATE_FILE, write_state
    from shared.bus import kafka_connection
    from shared.config import load_settings

    shell = {
        "SKUFORGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "SKUFORGE_KAFKA_SASL_USERNAME": "cluster-user",
        "SKUFORGE_KAFKA_SASL_PASSWORD": "hunter2-hunter2",
        "SKUFORGE_KAFKA_SSL_CAFILE": __file__,
    }
    for name, value in shell.items():
        monkeypatch.setenv(name, value)
    config = build_config(tmp_path, ports_mode="free", backends=["composite"], with_trainer=False)
    assert config.start_kafka
    own = {"bootstrap_servers": [config.kafka_bootstrap], "security_protocol": "PLAINTEXT"}

    def connection_under(env: Mapping[str, str]) -> dict[str, Any]:
        with monkeypatch.context() as process:
            for name, value in env.items():
                process.setenv(name, value)
            return kafka_connection(load_settings())

    # What the supervisor starts each service with: the shell's environment, then the service's.
    for spec in build_specs(config):
        assert connection_under(spec.env) == own, spec.name
    # A client of the stack (`skuforge demo`) takes stack.json's settings over its shell's.
    write_state(config, Supervisor([], report=lambda line: None), "starting")
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert connection_under(state["env"]) == own
    assert "hunter2-hunter2" not in (tmp_path / STATE_FILE).read_text()


def _up_in_shell(
    monkeypatch: pytest.MonkeyPatch, shell: dict[str, str], argv: list[str], started: list[str]
) -> int:
    """Run `skuforge up argv` (its real main, the supervisor's run replaced) in a shell with ``shell``'s
    variables and a console login; the services it would start are added to ``started``."""

    def runs_the_stack(self: Supervisor, **kwargs: object) -> int:
        started.extend(state.spec.name for state in self.services)
        return 0

    monkeypatch.setattr(devstack.up.Supervisor, "run", runs_the_stack)
    monkeypatch.setenv("SKUFORGE_CONSOLE_USERS", "demo:pw")
    for name, value in shell.items():
        monkeypatch.setenv(name, value)
    try:
        return main(argv)
    finally:
        while devstack.up._held_locks:  # held by a run that got past the check
            os.close(devstack.up._held_locks.pop())


@pytest.mark.parametrize(
    ("shell", "kafka_bootstrap"),
    [
        ({"SKUFORGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, None),  # its login left out
        ({"SKUFORGE_KAFKA_SASL_USERNAME": "cluster-user"}, None),  # its protocol left out
        ({"SKUFORGE_KAFKA_BOOTSTRAP": "kafka.elsewhere"}, None),
        ({"SKUFORGE_KAFKA_BOOTSTRAP": "kafka.elsewhere"}, "127.0.0.1:9"),
    ],
)
def test_up_does_not_refuse_kafka_settings_of_the_shell_its_services_do_not_get(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    shell: dict[str, str],
    kafka_bootstrap: str | None,
) -> None:
    """A shell half set up for another cluster (a SASL protocol without its login, a bootstrap with no
    port) stopped `skuforge up` with exit 2, although a stack with its own broker gives its services
    that broker's PLAINTEXT connection, and --kafka-bootstrap replaces the shell's bootstrap."""
    started: list[str] = []
    argv = ["--workdir", str(tmp_path), "--ports", "free"]
    bootstrap = ["--kafka-bootstrap", kafka_bootstrap] if kafka_bootstrap else []
    code = _up_in_shell(monkeypatch, shell, [*argv, *bootstrap], started)
    assert "invalid configuration" not in capsys.readouterr().err
    assert code == 0 and "topics" in started


def test_up_still_refuses_the_kafka_login_its_services_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --kafka-bootstrap the services take the shell's protocol and login: half of one stops up."""

    def runs_the_stack(self: Supervisor, **kwargs: object) -> int:
        raise AssertionError("started a stack whose services cannot log in to Kafka")

    monkeypatch.setattr(devstack.up.Supervisor, "run", runs_the_stack)
    monkeypatch.setenv("SKUFORGE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    code = main(["--workdir", str(tmp_path), "--ports", "free", "--kafka-bootstrap", "127.0.0.1:9"])
    assert code == 2
    assert "SKUFORGE_KAFKA_SASL_USERNAME" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("shell", "options"),
    [
        ({"SKUFORGE_CONSOLE_PORT": "99999"}, []),
        ({"SKUFORGE_CONSOLE_METRICS_PORT": "-1"}, []),
        ({"SKUFORGE_GENERATION_TRITON_PROTOCOL": "ftp"}, []),
        ({"SKUFORGE_GENERATION_TRITON_URL": "http://triton.elsewhere:8000"}, []),
        ({"SKUFORGE_GENERATION_SERVER_HTTP_PORT": "0"}, []),
        ({"SKUFORGE_GENERATION_SERVER_GRPC_PORT": "8000"}, []),  # the documented HTTP port
        ({"SKUFORGE_GENERATION_BACKEND": "dall-e"}, ["--backend", "composite"]),
        # A mix of one backend is also the backend every service is given: up stopped (exit 2) on the
        # shell's SKUFORGE_GENERATION_BACKEND when it read the mix, a value no service would see.
        (
            {"SKUFORGE_GENERATION_BACKEND": "dall-e", "SKUFORGE_GENERATION_BACKEND_MIX": '{"composite": 1}'},
            [],
        ),
        (
            {
                "SKUFORGE_GENERATION_BACKEND": "dall-e",
                "SKUFORGE_GENERATION_BACKEND_MIX": '{"composite": 1, "diffusion": 0}',
            },
            [],
        ),
        ({"SKUFORGE_STORE_URI": ""}, []),  # up's own store
        ({"SKUFORGE_CONSOLE_DB_PATH": ""}, []),  # up's own task table
        ({"SKUFORGE_CONSOLE_USERS": ""}, []),  # up's own login
    ],
)
def test_up_does_not_refuse_settings_of_the_shell_it_replaces_for_its_services(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    shell: dict[str, str],
    options: list[str],
) -> None:
    """up gives every service its own console ports, Triton address, protocol and ports, store, task
    table and login (and the backend, given once), yet checked the shell's: another deployment's
    SKUFORGE_CONSOLE_PORT=99999 or SKUFORGE_GENERATION_TRITON_PROTOCOL=ftp stopped it (exit 2)."""
    started: list[str] = []
    argv = ["--workdir", str(tmp_path), "--ports", "free", "--kafka-bootstrap", "127.0.0.1:9", *options]
    code = _up_in_shell(monkeypatch, shell, argv, started)
    assert "invalid configuration" not in capsys.readouterr().err
    assert code == 0 and "console" in started
    assert set(json.loads((tmp_path / "ports.json").read_text())) >= {"console", "triton_grpc"}


@pytest.mark.parametrize(
    ("shell", "options", "variable"),
    [
        ({"SKUFORGE_MAX_IMAGE_PIXELS": "0"}, [], "SKUFORGE_MAX_IMAGE_PIXELS"),
        # The generator stage asks for diffusion, which paints multiples of 8 px; the shell's composite
        # backend does not care, and the check passed it.
        (
            {"SKUFORGE_GENERATION_SIZE_PX": "516", "SKUFORGE_DIFFUSION_MODEL": "/models/inpaint"},
            ["--backend", "diffusion"],
            "SKUFORGE_GENERATION_SIZE_PX",
        ),
        # A mix of two backends leaves every service the shell's SKUFORGE_GENERATION_BACKEND, which
        # each refuses.
        (
            {
                "SKUFORGE_GENERATION_BACKEND": "dall-e",
                "SKUFORGE_GENERATION_BACKEND_MIX": '{"composite": 1, "diffusion": 1}',
                "SKUFORGE_DIFFUSION_MODEL": "/models/inpaint",
            },
            [],
            "SKUFORGE_GENERATION_BACKEND: ",
        ),
    ],
)
def test_up_refuses_settings_its_services_get_keeping_the_saved_ports(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    shell: dict[str, str],
    options: list[str],
    variable: str,
) -> None:
    """A setting that reaches a service as the shell gave it, or as up gives it (the one --backend), and
    that the service refuses, stops up (exit 2) before anything starts, the last run's ports kept."""
    saved = json.dumps({"console": 18087}) + "\n"
    (tmp_path / "ports.json").write_text(saved)
    started: list[str] = []
    argv = ["--workdir", str(tmp_path), "--ports", "free", "--kafka-bootstrap", "127.0.0.1:9", *options]
    code = _up_in_shell(monkeypatch, shell, argv, started)
    assert code == 2 and not started, f"started a stack whose services refuse {variable}"
    assert variable in capsys.readouterr().err
    assert (tmp_path / "ports.json").read_text() == saved


def test_a_second_up_in_a_workdir_another_up_holds_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # stack.json alone did not keep two stacks out of one workdir: one still stopping counted as not
    # running, and the second start stopped its broker; both then wrote stack.json.
    import fcntl
    import os

    from devstack.up import LOCK_FILE, hold_workdir
    from devstack.up import main as up_main

    other = os.open(tmp_path / LOCK_FILE, os.O_RDWR | os.O_CREAT)  # what another `skuforge up` holds
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert up_main(["--workdir", str(tmp_path)]) == 1
        assert "another skuforge up is starting, running or stopping from" in capsys.readouterr().err
        assert not (tmp_path / "stack.json").exists() and not (tmp_path / "ports.json").exists()
        assert hold_workdir(tmp_path) is False
    finally:
        os.close(other)
    from devstack import up as up_module

    assert hold_workdir(tmp_path) is True  # free again once its holder is gone
    os.close(up_module._held_locks.pop())


def test_the_first_console_user_is_the_first_entry_the_console_reads() -> None:
    """A leading comma (a list built in a shell loop) passed the settings check, then crashed the
    ready stack in on_ready ("not enough values to unpack") and took every service down."""
    from devstack.up import first_console_user

    assert first_console_user(",alice:pw,bob:x") == ("alice", "pw")
    assert first_console_user("carol:p:w") == ("carol", "p:w")


@pytest.mark.parametrize(
    ("bootstrap", "message"),
    [
        # `--kafka-bootstrap "$KAFKA"` with KAFKA unset was a KeyError traceback: no broker started
        # (one was given) and none given ("" is no address).
        (" ", "--kafka-bootstrap: is empty"),
        # Passed on to every service: the stack started, and its first service failed in its log.
        ("localhost", "--kafka-bootstrap: 'localhost' is not host:port (a port from 1 to 65535)"),
        ("127.0.0.1:9092,broker:99999", "--kafka-bootstrap: 'broker:99999' is not host:port"),
    ],
)
def test_a_kafka_bootstrap_that_is_no_address_is_a_usage_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    bootstrap: str,
    message: str,
) -> None:
    def starts_the_stack(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"started the stack with --kafka-bootstrap {bootstrap!r}")

    monkeypatch.setattr(devstack.up, "Supervisor", starts_the_stack)
    with pytest.raises(SystemExit) as exited:
        main(["--workdir", str(tmp_path), "--kafka-bootstrap", bootstrap])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_ports_auto_moves_only_the_taken_port(tmp_path: Path, held_console_port: int) -> None:
    """One taken port moved every port of the stack, Kafka's and the bookmarked metrics ports too."""
    ports = resolve_ports(tmp_path, "auto")
    assert ports["console"] != held_console_port
    kept = {name: port for name, port in ports.items() if name != "console"}
    free_defaults = {
        name: DEFAULT_PORTS[name] for name in kept if not devstack.up.port_in_use(DEFAULT_PORTS[name])
    }
    assert free_defaults, "every documented port is taken on this machine"
    assert {name: kept[name] for name in free_defaults} == free_defaults
    assert len(set(ports.values())) == len(ports)


def test_ports_auto_keeps_each_saved_port_that_is_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last run's ports were all dropped when any one of them was taken: the console moved off the
    port its users had bookmarked because a metrics port was busy."""
    saved = {name: 41000 + index for index, name in enumerate(DEFAULT_PORTS)}
    (tmp_path / "ports.json").write_text(json.dumps(saved))
    taken = {saved["gate"]}
    monkeypatch.setattr(devstack.up, "port_in_use", lambda port: port in taken)
    ports = resolve_ports(tmp_path, "auto")
    assert ports["gate"] not in taken
    assert {name: port for name, port in ports.items() if name != "gate"} == {
        name: port for name, port in saved.items() if name != "gate"
    }


def test_ports_auto_warns_of_and_rechooses_ports_out_of_range_in_a_hand_edited_ports_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A port out of 1-65535 was an OverflowError traceback from the check whether it is taken, and 0
    (the kernel's "any port") was given to the service as it stood; "²" (a digit to str.isdigit(), not
    to int()) was a ValueError traceback."""
    matting, captioner = free_port(), free_port()
    saved = {
        "kafka": 70000,
        "gate": -5,
        "console": 0,
        "trainstore": "²",
        "matting": str(matting),
        "captioner": captioner,
    }
    (tmp_path / "ports.json").write_text(json.dumps(saved))
    ports = resolve_ports(tmp_path, "auto")
    assert ports["matting"] == matting and ports["captioner"] == captioner  # the usable ones are kept
    assert all(1 <= port <= 65535 for port in ports.values())
    assert len(set(ports.values())) == len(ports)
    warnings = capsys.readouterr().err.splitlines()
    for name in ("kafka 70000", "gate -5", "console 0", "trainstore '²'"):
        assert any(str(tmp_path / "ports.json") in line and name in line for line in warnings), name


@pytest.mark.parametrize("own_broker", [True, False])
def test_a_broker_left_running_is_stopped_before_the_ports_are_chosen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own_broker: bool
) -> None:
    """It holds the last run's ports: chosen first, `--ports auto` found them taken and moved away.
    A stack on another broker (--kafka-bootstrap) leaves it alone."""
    order: list[str] = []
    monkeypatch.setattr(LocalKafka, "is_running", lambda self: True)
    monkeypatch.setattr(LocalKafka, "stop", lambda self, timeout_s=30: order.append("stop broker"))

    def resolve(*args: object, **kwargs: object) -> dict[str, int]:
        order.append("choose ports")
        raise devstack.up.PortsInUse("stop here")

    monkeypatch.setattr(devstack.up, "resolve_ports", resolve)
    elsewhere = [] if own_broker else ["--kafka-bootstrap", "broker.example:9092"]
    assert main(["--workdir", str(tmp_path / "stack"), *elsewhere]) == 1
    assert order == (["stop broker", "choose ports"] if own_broker else ["choose ports"])


def _sleeper(tmp_path: Path, name: str) -> ServiceSpec:
    return ServiceSpec(
        name=name,
        argv=[sys.executable, "-c", "import time; time.sleep(120)"],
        log_path=tmp_path / f"{name}.log",
    )


def test_a_service_whose_program_cannot_be_run_fails_start_up_with_a_line_not_a_traceback(
    tmp_path: Path,
) -> None:
    """Popen's PermissionError (a program without its execute bit) went through run() and `skuforge up`
    as a traceback, after every service before it had started; stack.json was never set to stopped."""
    program = tmp_path / "prometheus"
    program.write_text("#!/bin/sh\nsleep 120\n")  # no execute bit
    lines: list[str] = []
    supervisor = Supervisor(
        [_sleeper(tmp_path, "kafka"), ServiceSpec("prometheus", [str(program)], tmp_path / "p.log")],
        grace_s=5,
        report=lines.append,
    )
    assert supervisor.run() == 1
    failure = next(line for line in lines if line.startswith("start-up failed"))
    assert f"prometheus: cannot run {program}" in failure and "Permission denied" in failure
    assert supervisor["kafka"].status == "stopped"
    assert processes_with_env(SUPERVISOR_ID_ENV, supervisor.supervisor_id) == []


def test_a_service_that_cannot_be_run_again_keeps_backing_off_and_the_others_run(tmp_path: Path) -> None:
    """A restart whose Popen failed raised out of the watch loop: the whole stack stopped."""
    program = tmp_path / "stage"
    program.write_text("#!/bin/sh\nsleep 120\n")
    program.chmod(0o755)
    lines: list[str] = []
    supervisor = Supervisor(
        [_sleeper(tmp_path, "kafka"), ServiceSpec("stage", [str(program)], tmp_path / "stage.log")],
        grace_s=5,
        backoff_initial_s=0.1,
        report=lines.append,
    )
    try:
        assert supervisor.start()
        program.chmod(0o644)  # the program broken while the stack runs
        os.kill(supervisor["stage"].pid or 0, signal.SIGKILL)
        deadline = time.monotonic() + 60  # a guard against hanging, not a measure
        while time.monotonic() < deadline and not any("cannot run" in line for line in lines):
            supervisor.check_once()
            time.sleep(0.1)
        assert any(f"stage: cannot run {program}" in line for line in lines)
        assert supervisor["stage"].status == "backing-off"
        assert supervisor["kafka"].pid is not None  # the rest of the stack runs on
        program.chmod(0o755)  # fixed: the next turn starts it
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and supervisor["stage"].pid is None:
            supervisor.check_once()
            time.sleep(0.1)
        assert supervisor["stage"].pid is not None
    finally:
        supervisor.stop()
    assert processes_with_env(SUPERVISOR_ID_ENV, supervisor.supervisor_id) == []


def test_up_with_a_prometheus_bin_that_is_not_a_program_is_refused_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was taken because it existed; the whole stack started, and Prometheus, last, could not run."""

    def starts_the_stack(*args: object, **kwargs: object) -> None:
        raise AssertionError("started the stack with a Prometheus that cannot run")

    monkeypatch.setattr(devstack.up, "Supervisor", starts_the_stack)
    (tmp_path / "prometheus").write_text("#!/bin/sh\n")  # no execute bit
    for index, not_a_program in enumerate((tmp_path, tmp_path / "prometheus")):
        monkeypatch.setenv("SKUFORGE_PROMETHEUS_BIN", str(not_a_program))
        code = main(["--workdir", str(tmp_path / f"stack{index}"), "--ports", "free", "--with-prometheus"])
        assert code == 2
        err = capsys.readouterr().err
        assert f"SKUFORGE_PROMETHEUS_BIN={not_a_program} is not an executable file" in err


def test_console_users_that_name_nobody_stop_up_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SKUFORGE_CONSOLE_USERS="," passed the settings check (no entry, so nothing wrong): Kafka, Triton
    and every stage started, then the console refused to serve with no reviewer."""

    def starts_the_stack(*args: object, **kwargs: object) -> None:
        raise AssertionError("started the stack with a console no one can log in to")

    monkeypatch.setattr(devstack.up, "Supervisor", starts_the_stack)
    monkeypatch.setenv("SKUFORGE_CONSOLE_USERS", " , ,")
    assert main(["--workdir", str(tmp_path / "stack"), "--ports", "free"]) == 2
    assert "SKUFORGE_CONSOLE_USERS" in capsys.readouterr().err


@pytest.mark.parametrize("saved", ["demo-password-without-a-name\n", ",\n", b"\xff\xfe demo:pw\n"])
def test_a_damaged_console_login_file_stops_up_with_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], saved: str | bytes
) -> None:
    """<workdir>/console-login was used without the checks SKUFORGE_CONSOLE_USERS gets: writing
    stack.json then failed with a traceback (ValueError, StopIteration). It is kept, not replaced."""

    def starts_the_stack(*args: object, **kwargs: object) -> None:
        raise AssertionError("started the stack with a console login no one can use")

    monkeypatch.setattr(devstack.up, "Supervisor", starts_the_stack)
    monkeypatch.delenv("SKUFORGE_CONSOLE_USERS", raising=False)
    login = tmp_path / "console-login"
    login.write_bytes(saved if isinstance(saved, bytes) else saved.encode())
    code = main(["--workdir", str(tmp_path), "--ports", "free", "--kafka-bootstrap", "127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"skuforge up: {login}: ") and err.count("\n") == 1
    assert login.read_bytes() == (saved if isinstance(saved, bytes) else saved.encode())
    os.close(devstack.up._held_locks.pop())


@pytest.fixture
def not_http_port() -> Iterator[int]:
    """A port answered by something that is not HTTP (a Kafka broker, a gRPC server), as a free port
    chosen for a stage may be by the time its ready check asks it."""
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def answer() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = listener.accept()
                with connection:
                    connection.recv(4096)
                    connection.sendall(b"\x00\x00\x00\x12\x00\x23not an http answer\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()


def test_a_port_answered_by_something_not_http_is_not_ready_and_the_stack_runs_on(
    tmp_path: Path, not_http_port: int
) -> None:
    """http.client's BadStatusLine went through both ready checks, out of the watch loop: a stage
    restarting beside a port that spoke another protocol stopped the whole stack with a traceback."""
    from devstack.supervisor import http_ok
    from devstack.up import holds_partitions

    readyz = http_ok(f"http://127.0.0.1:{not_http_port}/readyz")
    holding = holds_partitions(f"http://127.0.0.1:{not_http_port}/metrics", ["sku.ingested.v1"])
    ready = {"stage": True}
    stage = ServiceSpec(
        name="stage",
        argv=[sys.executable, "-c", "import time; time.sleep(120)"],
        log_path=tmp_path / "stage.log",
        ready=lambda: ready["stage"] or (readyz() and holding()),
        ready_timeout_s=60,
    )
    lines: list[str] = []
    supervisor = Supervisor(
        [_sleeper(tmp_path, "kafka"), stage], grace_s=5, backoff_initial_s=0.1, report=lines.append
    )
    try:
        assert supervisor.start()
        ready["stage"] = False  # from now on its ready checks ask the port
        os.kill(supervisor["stage"].pid or 0, signal.SIGKILL)
        deadline = time.monotonic() + 60  # a guard against hanging, not a measure
        while time.monotonic() < deadline and supervisor["stage"].status != "starting":
            supervisor.check_once()
            time.sleep(0.1)
        assert supervisor["stage"].status == "starting"
        for _ in range(5):
            supervisor.check_once()  # asks readyz, and holding, of the port each turn
        assert not readyz() and not holding()
        assert supervisor["stage"].status == "starting" and supervisor["kafka"].pid is not None
    finally:
        supervisor.stop()
    assert processes_with_env(SUPERVISOR_ID_ENV, supervisor.supervisor_id) == []


@pytest.mark.parametrize(
    "supervisor_pid",
    [0, -1, "0", 10**20, 1, True, "1", 1.9],
    ids=["0", "-1", "text-0", "past-c-long", "init-1", "json-true", "text-1", "fraction"],
)
def test_a_stack_json_naming_no_process_is_no_stack_and_no_group_is_signalled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], supervisor_pid: Any
) -> None:
    """A damaged or hand-edited supervisor_pid of 0 or -1 passed kill(pid, 0) (that signals a process
    group and succeeds): `up` refused to start, telling the user to `kill 0`, their own group, and a
    demo used a stack that was not there. A pid past C's long was an OverflowError traceback. 1 (init,
    or JSON's true, or 1.9) passed as a stack started after init: `up` refused, telling the user to
    `kill 1`."""

    class Started(Exception):
        pass

    def starts_the_stack(*args: object, **kwargs: object) -> None:
        raise Started

    signalled: list[int] = []
    real_kill = os.kill

    def kill(pid: int, sig: int) -> None:
        signalled.append(pid)
        real_kill(pid, sig)

    monkeypatch.setattr(devstack.up, "Supervisor", starts_the_stack)
    monkeypatch.setattr(devstack.up.os, "kill", kill)
    monkeypatch.setenv("SKUFORGE_CONSOLE_USERS", "demo:pw")
    state = {"state": "ready", "supervisor_pid": supervisor_pid, "started_at": time.time()}
    (tmp_path / "stack.json").write_text(json.dumps(state))
    assert devstack.up.read_state(tmp_path) is None
    with pytest.raises(Started):  # a stack is started, not refused
        main(["--workdir", str(tmp_path), "--ports", "free", "--kafka-bootstrap", "127.0.0.1:9"])
    assert "already runs" not in capsys.readouterr().err
    assert all(pid > 1 for pid in signalled)
    os.close(devstack.up._held_locks.pop())


# Stands in for `skuforge up` running as a container's pid 1: writes stack.json as `up` does, then,
# as another shell in the container would, asks whether a stack runs there (``PROBE``).
UP_AS_PID_1 = """
import subprocess, sys
from pathlib import Path
from devstack.supervisor import Supervisor
from devstack.up import build_config, write_state

workdir = Path(sys.argv[sys.argv.index("--workdir") + 1])
config = build_config(workdir, kafka_bootstrap="127.0.0.1:9", backends=["composite"], with_trainer=False)
write_state(config, Supervisor([], report=lambda line: None), "ready")
probe = subprocess.run([sys.executable, "-c", sys.argv[-1], str(workdir)], capture_output=True, text=True)
(workdir / "probe.out").write_text(probe.stdout + probe.stderr)
"""
PROBE = """
import sys
from pathlib import Path
from devstack.up import read_state
state = read_state(Path(sys.argv[1]))
print("running" if state is not None else "no stack", state and state["supervisor_pid"])
"""


def _pid_namespaces_available() -> bool:
    try:
        unshared = subprocess.run(["unshare", "-Urpf", "--mount-proc", "true"], capture_output=True)
    except OSError:
        return False
    return unshared.returncode == 0


@pytest.mark.skipif(not _pid_namespaces_available(), reason="needs unshare into a new pid namespace")
@pytest.mark.parametrize(
    ("command", "seen_inside"),
    [(["-m", "skuforge_cli", "up"], "running 1"), (["skuforge_cli/__main__.py"], "no stack None")],
    ids=["skuforge-up-is-pid-1", "another-program-is-pid-1"],
)
def test_a_stack_whose_up_is_pid_1_of_a_container_runs_there_and_nowhere_else(
    tmp_path: Path, command: list[str], seen_inside: str
) -> None:
    """In a container `skuforge up` may be pid 1 itself: its stack.json said supervisor_pid 1, which
    read as init, so a second `up` or a demo from another shell there said no stack runs (and started
    one beside it). Pid 1 is the stack's where it is `skuforge up` in the namespace that wrote the file;
    seen from the host, or where pid 1 is another program, it is still no stack (nobody is told to
    `kill 1`)."""
    fake_root = tmp_path / "fake-root"
    (fake_root / "skuforge_cli").mkdir(parents=True)
    (fake_root / "skuforge_cli" / "__init__.py").write_text("")
    (fake_root / "skuforge_cli" / "__main__.py").write_text(textwrap.dedent(UP_AS_PID_1))
    workdir = tmp_path / "stack"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "SKUFORGE_CONSOLE_USERS": "demo:pw"}
    run = subprocess.run(
        ["unshare", "-Urpf", "--mount-proc", sys.executable, *command, "--workdir", str(workdir), PROBE],
        cwd=fake_root,  # `python -m skuforge_cli` finds the fake first
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads((workdir / "stack.json").read_text())["supervisor_pid"] == 1
    assert (workdir / "probe.out").read_text().strip() == seen_inside
    assert devstack.up.read_state(workdir) is None  # the host's pid 1 is its init


def test_a_run_refused_for_a_damaged_console_login_keeps_the_saved_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ports.json was written before the login was checked: a refused run replaced the ports of the
    last one (the console's bookmarked port too) with those of a stack that never started."""
    monkeypatch.delenv("SKUFORGE_CONSOLE_USERS", raising=False)
    (tmp_path / "console-login").write_text("demo-password-without-a-name\n")
    saved = json.dumps({"console": 8087, "kafka": 9092}) + "\n"
    (tmp_path / "ports.json").write_text(saved)
    assert main(["--workdir", str(tmp_path), "--ports", "free", "--kafka-bootstrap", "127.0.0.1:9"]) == 2
    assert "console-login" in capsys.readouterr().err
    assert (tmp_path / "ports.json").read_text() == saved
    os.close(devstack.up._held_locks.pop())


@pytest.mark.parametrize("saved_pid", ["0", "-1"])
def test_a_damaged_broker_pid_file_signals_no_process_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, saved_pid: str
) -> None:
    """<workdir>/kafka/broker.pid of 0 passed for a broker left running (kill(0, 0) succeeds and
    /proc/0 is not there to say otherwise): `skuforge up` "stopped" it with SIGTERM to its own
    process group; -1 hung the start 40 s waiting for "every process" to exit."""
    signalled: list[int] = []
    real_kill = os.kill

    def kill(pid: int, sig: int) -> None:
        if sig != 0:
            signalled.append(pid)
            return
        real_kill(pid, sig)

    def killpg(pgid: int, sig: int) -> None:
        signalled.append(-pgid)

    monkeypatch.setattr(os, "kill", kill)
    monkeypatch.setattr(os, "killpg", killpg)
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / "broker.pid").write_text(saved_pid + "\n")
    said: list[str] = []
    devstack.up._stop_stale_broker(tmp_path, said.append)
    # Nothing said: no stop began, so no wait for "every process" to exit (asserted as such, not as a
    # time under 5 s, which a loaded machine can miss).
    assert signalled == [] and said == []


@pytest.mark.parametrize("blocked", ["stack.json", "ports.json"])
def test_a_state_file_up_cannot_write_stops_it_with_one_line_starting_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], blocked: str
) -> None:
    """ports.json or stack.json that cannot be written (here a directory in its place; another user's
    file, a full disk) was an IsADirectoryError/PermissionError traceback out of `skuforge up`; a
    refused stack.json then left the stack.tmp it was to be replaced from."""

    def runs_the_stack(self: object, **kwargs: object) -> int:
        raise AssertionError("started a stack whose state cannot be written")

    monkeypatch.setattr(devstack.up.Supervisor, "run", runs_the_stack)
    monkeypatch.setenv("SKUFORGE_CONSOLE_USERS", "demo:pw")
    (tmp_path / blocked).mkdir()
    code = main(["--workdir", str(tmp_path), "--ports", "free", "--kafka-bootstrap", "127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("skuforge up: cannot write the stack's ") and err.count("\n") == 1
    assert str(tmp_path / blocked) in err
    assert not (tmp_path / "stack.tmp").exists(), "the refused run left its stack.tmp behind"
    os.close(devstack.up._held_locks.pop())


def test_a_run_that_fails_writing_ports_json_keeps_the_saved_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ports.json was rewritten in place: a disk that filled up (or a crash) mid-write left it cut
    short, and the next run warned and moved every service, the console's bookmarked port too."""
    real_write_text = Path.write_text

    def disk_full_half_way(self: Path, data: str, *args: Any, **kwargs: Any) -> int:
        if not self.name.startswith("ports."):
            return real_write_text(self, data, *args, **kwargs)
        real_write_text(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    def runs_the_stack(self: object, **kwargs: object) -> int:
        raise AssertionError("started a stack whose ports could not be saved")

    monkeypatch.setattr(devstack.up.Supervisor, "run", runs_the_stack)
    monkeypatch.setenv("SKUFORGE_CONSOLE_USERS", "demo:pw")
    saved = json.dumps({"console": 18087, "kafka": 19092}, indent=2) + "\n"
    (tmp_path / "ports.json").write_text(saved)
    monkeypatch.setattr(Path, "write_text", disk_full_half_way)
    code = main(["--workdir", str(tmp_path), "--ports", "free", "--kafka-bootstrap", "127.0.0.1:9"])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("skuforge up: cannot write the stack's ") and err.count("\n") == 1
    assert (tmp_path / "ports.json").read_text() == saved
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith("ports.")] == ["ports.json"]
    os.close(devstack.up._held_locks.pop())


def test_a_service_killed_by_a_signal_is_reported_so_and_its_log_records_the_exit(tmp_path: Path) -> None:
    """A service the OOM killer took said only "exited with code -9", and its log (which the report points to)
    ended at its last own line: nothing there said it died, or why, before the next start's."""
    lines: list[str] = []
    supervisor = Supervisor(
        [_sleeper(tmp_path, "stage")], grace_s=5, backoff_initial_s=0.1, report=lines.append
    )
    try:
        assert supervisor.start()
        os.kill(supervisor["stage"].pid or 0, signal.SIGKILL)
        deadline = time.monotonic() + 60  # a guard against hanging, not a measure
        while time.monotonic() < deadline and supervisor["stage"].status != "backing-off":
            supervisor.check_once()
            time.sleep(0.1)
        restarts = [line for line in lines if "restarting in" in line]
        assert restarts, f"no 'restarting in' line reported after the kill; the supervisor said: {lines}"
        exited = restarts[0]
        assert exited.startswith("stage: exited with code -9 (killed by SIGKILL) after ")
        log = (tmp_path / "stage.log").read_text().splitlines()
        assert (
            log[-1].startswith("--- ")
            and "skuforge up: stage exited with code -9 (killed by SIGKILL) after " in log[-1]
        )
    finally:
        supervisor.stop()
    assert processes_with_env(SUPERVISOR_ID_ENV, supervisor.supervisor_id) == []


def test_a_state_file_that_cannot_be_written_once_ready_is_said_and_up_stops_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """stack.json written at start, then the disk full: the write of the ready state went out of
    Supervisor.run (stopping every service) and of `skuforge up` as a traceback, as did the last one."""
    real_write_state = devstack.up.write_state
    written: list[str] = []

    def disk_full_once_started(config: Any, supervisor: Supervisor, state: str) -> None:
        if state == "starting":
            real_write_state(config, supervisor, state)
            return
        written.append(state)
        if state == "ready":
            supervisor.stopping.set()  # what Ctrl-C does: the test's end of the run
        raise OSError(errno.ENOSPC, "No space left on device", str(config.workdir / "stack.json"))

    monkeypatch.setattr(devstack.up, "build_specs", lambda config: [_sleeper(tmp_path, "stage")])
    monkeypatch.setattr(devstack.up, "write_state", disk_full_once_started)
    monkeypatch.setenv("SKUFORGE_CONSOLE_USERS", "demo:pw")
    code = main(["--workdir", str(tmp_path), "--ports", "free", "--kafka-bootstrap", "127.0.0.1:9"])
    os.close(devstack.up._held_locks.pop())
    out = capsys.readouterr().out
    assert code == 0
    assert "ready" in written and written[-1] == "stopped"
    assert "cannot record the stack's state: [Errno 28] No space left on device" in out
    assert "the stack is ready:" in out


def test_a_service_killed_for_not_being_ready_has_that_said_in_its_log(tmp_path: Path) -> None:
    """Its log read "exited with code -9 (killed by SIGKILL)" with nothing to say the supervisor did it."""
    spec = ServiceSpec(
        name="stuck",
        argv=[sys.executable, "-c", "import time; time.sleep(120)"],
        log_path=tmp_path / "stuck.log",
        ready=lambda: False,
        ready_timeout_s=1,
        start_attempts=2,
    )
    supervisor = Supervisor([spec], grace_s=2, report=lambda _: None)
    try:
        with pytest.raises(devstack.supervisor.SupervisorError):
            supervisor.start()
    finally:
        supervisor.stop()
    log = (tmp_path / "stuck.log").read_text()
    assert "skuforge up: not ready within 1s; killing it and starting it again (attempt 2 of 2)" in log


def test_a_stack_json_written_in_another_pid_namespace_is_not_ours(tmp_path: Path) -> None:
    """A stack.json written in a container (another pid namespace) names a pid of that namespace;
    here the same number may be any process (this test's, below), which read_state took for the stack:
    `up` refused to start, telling the user to kill it, and a demo used a stack that was not there. A
    file without the field (written before it was recorded) is read as it was."""
    state: dict[str, Any] = {"state": "ready", "supervisor_pid": os.getpid(), "started_at": time.time()}
    (tmp_path / "stack.json").write_text(json.dumps(state))
    assert devstack.up.read_state(tmp_path) == state  # no namespace recorded: today's reading
    state["pid_namespace"] = devstack.up.pid_namespace()
    (tmp_path / "stack.json").write_text(json.dumps(state))
    assert devstack.up.read_state(tmp_path) == state
    state["pid_namespace"] = "pid:[1]"  # no namespace has that inode: another machine's, or a container's
    (tmp_path / "stack.json").write_text(json.dumps(state))
    assert devstack.up.read_state(tmp_path) is None


def test_a_stack_json_whose_pid_was_reused_within_a_minute_is_stale(tmp_path: Path) -> None:
    """A stack killed soon after it started leaves a pid that the next process may take at once; the
    start-time check allowed a minute's slack (started_at is written a moment after the supervisor
    starts, and clocks get nudged), so that process passed for the stack. The supervisor's own start
    time, as /proc counts it, tells them apart."""
    newcomer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start_ticks = devstack.up.process_start_ticks(newcomer.pid)
        assert start_ticks is not None
        state = {
            "state": "ready",
            "supervisor_pid": newcomer.pid,
            "supervisor_start_ticks": start_ticks - 1,  # the dead supervisor's, a tick earlier
            "started_at": time.time(),
        }
        (tmp_path / "stack.json").write_text(json.dumps(state))
        assert devstack.up.read_state(tmp_path) is None
        state["supervisor_start_ticks"] = start_ticks  # written by that very process
        (tmp_path / "stack.json").write_text(json.dumps(state))
        assert devstack.up.read_state(tmp_path) == state
    finally:
        newcomer.kill()
        newcomer.wait()


def test_stack_json_records_whose_pid_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`up` writes its pid namespace and its start time beside its pid, so a reader can tell its own
    stack from a pid that names another process."""
    monkeypatch.setenv("SKUFORGE_CONSOLE_USERS", "demo:pw")
    config = build_config(tmp_path, kafka_bootstrap="127.0.0.1:9", backends=["composite"], with_trainer=False)
    devstack.up.write_state(config, Supervisor([], report=lambda line: None), "ready")
    written = json.loads((tmp_path / "stack.json").read_text())
    assert written["pid_namespace"] == os.readlink("/proc/self/ns/pid")
    # starttime, the 22nd field of /proc/<pid>/stat (counted after the comm's last ")").
    own_start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    assert written["supervisor_start_ticks"] == own_start_ticks
    assert devstack.up.read_state(tmp_path) == written


def test_a_prometheus_port_taken_while_the_stack_starts_moves_prometheus_not_the_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prometheus's port is chosen before the stack starts, and Prometheus starts last, minutes later: a
    port taken meanwhile ("bind: address already in use") failed the whole start-up and stopped every
    service. Its port is checked as it starts; a taken one is said and another chosen, and the address
    up prints and writes to stack.json is the one it serves on."""
    monkeypatch.setenv("SKUFORGE_CONSOLE_USERS", "demo:pw")
    config = build_config(tmp_path, ports_mode="free", kafka_bootstrap="127.0.0.1:9", with_trainer=False)
    prometheus = stack_prometheus(tmp_path / "prometheus", config.ports, prefer_default_port=False)
    reported: list[str] = []
    spec = devstack.up.prometheus_service(config, prometheus, report=reported.append)
    chosen_port = prometheus.port
    with socket.socket() as taken_meanwhile:  # listens, never answers: not a Prometheus
        taken_meanwhile.bind(("127.0.0.1", chosen_port))
        taken_meanwhile.listen()
        supervisor = Supervisor([spec], grace_s=10, report=reported.append)
        try:
            assert supervisor.start(), reported
            assert supervisor["prometheus"].status == "ready"
            served_at = config.prometheus_url
            assert served_at == prometheus.url != f"http://127.0.0.1:{chosen_port}"
            assert prometheus.ready()  # the ready check asked the new address, not the taken one
        finally:
            supervisor.stop()
    assert any(f"port {chosen_port} was taken" in line for line in reported), reported


# The supervisor above, its service deaf to SIGTERM (stuck in a close that waits on a broker away, say)
# and the grace before SIGKILL long.
STUBBORN_SERVICE_SUPERVISOR_SCRIPT = SUPERVISOR_SCRIPT.replace(
    '"import os, socket, time\\n"',
    '"import os, signal, socket, time\\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"',
).replace("grace_s=2", "grace_s=300")


def test_a_second_ctrl_c_while_up_stops_kills_what_is_left_at_once(tmp_path: Path) -> None:
    """The first Ctrl-C gives each service --grace-s (20 s) to stop, one after the other; a second one
    only said nothing, and the user waited out every grace or killed `up` outright, which left a service
    deaf to SIGTERM (its parent-death signal) running, holding its port. Now it kills what is left."""
    assert (
        "SIG_IGN" in STUBBORN_SERVICE_SUPERVISOR_SCRIPT
        and "grace_s=300" in STUBBORN_SERVICE_SUPERVISOR_SCRIPT
    )
    with supervised_listener(tmp_path, STUBBORN_SERVICE_SUPERVISOR_SCRIPT, preexec_fn=as_from_a_shell) as run:
        os.kill(run.supervisor.pid, signal.SIGINT)
        wait_for("the stop to begin", lambda: "listener: stopping" in run.out_path.read_text(), 30)
        os.kill(run.supervisor.pid, signal.SIGINT)
        try:
            run.supervisor.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the second Ctrl-C was lost: the supervisor waited on:\n{run.out_path.read_text()}")
        assert run.supervisor.returncode == 0, run.out_path.read_text()
        assert "received SIGINT again; killing what is left now" in run.out_path.read_text()
        assert not alive(run.listener_pid) and not port_in_use(run.port)


@pytest.mark.parametrize(
    ("scenes", "said"),
    [
        (
            None,
            "  scenes     procedural (SKUFORGE_SCENES_URI unset): real products do better on store photos, "
            "e.g. SKUFORGE_SCENES_URI=samples/grocerystore-scenes (docs/evaluation.md)",
        ),
        ("/photos/store", "  scenes     /photos/store"),
    ],
    ids=["unset", "set"],
)
def test_the_ready_summary_says_which_scenes_composites_go_on(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    scenes: str | None,
    said: str,
) -> None:
    """`skuforge up`, then `skuforge ingest DIR` as its summary says: real photos were composited on the
    renderer's procedural scenes, which lowered a classifier's accuracy (docs/evaluation.md), and
    nothing said so (the demo puts them on the sample store photos)."""

    def stop_once_ready(config: Any, supervisor: Supervisor, state: str) -> None:
        if state == "ready":
            supervisor.stopping.set()  # what Ctrl-C does: the test's end of the run

    monkeypatch.chdir(Path(devstack.up.__file__).resolve().parents[1])
    monkeypatch.setattr(devstack.up, "build_specs", lambda config: [_sleeper(tmp_path, "stage")])
    monkeypatch.setattr(devstack.up, "write_state", stop_once_ready)
    monkeypatch.setenv("SKUFORGE_CONSOLE_USERS", "demo:pw")
    if scenes is None:
        monkeypatch.delenv("SKUFORGE_SCENES_URI", raising=False)
    else:
        monkeypatch.setenv("SKUFORGE_SCENES_URI", scenes)
    code = main(["--workdir", str(tmp_path), "--ports", "free", "--kafka-bootstrap", "127.0.0.1:9"])
    os.close(devstack.up._held_locks.pop())
    assert code == 0
    summary = [line.split(" up  ", 1)[1] for line in capsys.readouterr().out.splitlines() if " up  " in line]
    assert said in summary


def test_the_ready_summary_gives_the_ingest_command_with_the_stacks_kafka_and_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """'skuforge ingest DIR (with SKUFORGE_KAFKA_BOOTSTRAP and SKUFORGE_STORE_URI above)': with a port
    moved by --ports auto, an ingest run with the defaults published to another broker on 9092 (an old
    `make kafka-up`), exit 0, and the stack never saw the SKUs. The line is now the command to run."""

    def stop_once_ready(config: Any, supervisor: Supervisor, state: str) -> None:
        if state == "ready":
            supervisor.stopping.set()

    workdir = tmp_path / "my stack"  # a space: the command quotes the store's address
    monkeypatch.setattr(devstack.up, "build_specs", lambda config: [_sleeper(tmp_path, "stage")])
    monkeypatch.setattr(devstack.up, "write_state", stop_once_ready)
    monkeypatch.setenv("SKUFORGE_CONSOLE_USERS", "demo:pw")
    monkeypatch.delenv("SKUFORGE_STORE_URI", raising=False)
    code = main(["--workdir", str(workdir), "--ports", "free", "--kafka-bootstrap", "127.0.0.1:9"])
    os.close(devstack.up._held_locks.pop())
    assert code == 0
    summary = [line.split(" up  ", 1)[1] for line in capsys.readouterr().out.splitlines() if " up  " in line]
    store = f"file://{(workdir / 'store').resolve()}"
    assert (
        f"  feed it    SKUFORGE_KAFKA_BOOTSTRAP=127.0.0.1:9 SKUFORGE_STORE_URI='{store}' skuforge ingest DIR"
        in summary
    )


def test_a_broker_config_whose_port_is_no_ascii_number_stops_up_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A superscript "²" as <workdir>/kafka's listener port passed isdigit() and was a ValueError
    traceback out of `skuforge up` ("invalid literal for int()") while it looked for a stale broker."""
    from devstack.up import main as up_main

    (tmp_path / "kafka").mkdir()
    config = tmp_path / "kafka" / "server.properties"
    config.write_text("listeners=PLAINTEXT://127.0.0.1:\u00b2,CONTROLLER://127.0.0.1:9093\n")
    assert up_main(["--workdir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    listener = "PLAINTEXT://127.0.0.1:\u00b2"
    assert f"skuforge up: {config}: listener {listener!r} has no port in ASCII digits" in err
    assert "Traceback" not in err and not (tmp_path / "stack.json").exists()
