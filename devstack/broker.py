"""A real single-node Apache Kafka broker (KRaft, broker + controller in one JVM) for tests and local runs.

The broker is the genuine ``kafka.Kafka`` from the Apache Kafka jars that ``deploy/kafka/pom.xml``
lists; Maven copies them into ``deploy/kafka/lib/`` once (:func:`resolve_jars`), after which everything
runs from that directory with plain ``java``. :class:`LocalKafka` renders
``deploy/kafka/server.properties.template`` into a data directory, formats the KRaft metadata log
there on first use, launches the JVM in its own process group and blocks until a Kafka admin client
can talk to it.

Layout of a data directory::

    server.properties   rendered broker config
    cluster.id          the KRaft cluster id used to format the log dir (kept across restarts)
    kraft/              log.dirs: partitions and the __cluster_metadata log
    logs/server.log     log4j2 output (deploy/kafka/log4j2.yaml)
    broker.out          the JVM's stdout/stderr (normally only errors)
    format.log          output of the one-time storage format
    broker.pid          pid of the running JVM, so another process can stop it

Command line::

    python -m devstack.broker start [--data-dir var/kafka] [--port 9092] [--controller-port 9093]
                                    [--foreground]
    python -m devstack.broker stop [--data-dir var/kafka]
    python -m devstack.broker status [--data-dir var/kafka]

The environment variables ``SKUFORGE_KAFKA_DATA_DIR``, ``SKUFORGE_KAFKA_PORT``,
``SKUFORGE_KAFKA_CONTROLLER_PORT`` and ``SKUFORGE_KAFKA_HEAP_MB`` give the defaults (flags win);
``JAVA`` names the java binary (default: ``java`` on ``PATH``) and ``MVN`` the Maven binary.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from devstack.supervisor import exit_reason, parent_death_signal, shown_line
from shared.argtypes import CommandParser, folder_problem, int_between, path_argument, positive_float
from shared.signals import raise_stopped

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_DIR = REPO_ROOT / "deploy" / "kafka"
DEFAULT_DATA_DIR = REPO_ROOT / "var" / "kafka"
DEFAULT_PORT = 9092
DEFAULT_CONTROLLER_PORT = 9093
MIN_JAVA_MAJOR = 17

CONFIG_FILE = "server.properties"
CLUSTER_ID_FILE = "cluster.id"
PID_FILE = "broker.pid"
OUT_FILE = "broker.out"
FORMAT_LOG = "format.log"
LOG_DIR = "kraft"
LOG4J_DIR = "logs"

_RESOLVED_MARKER = ".resolved"
_PLACEHOLDER = re.compile(r"@[A-Z_]+@")
# The listeners of server.properties.template a handle takes its ports from (``from_data_dir``).
_PORT_OF_LISTENER = {"PLAINTEXT": "port", "CONTROLLER": "controller_port"}


class BrokerError(RuntimeError):
    """The local broker could not be resolved, started, reached or stopped."""


# --------------------------------------------------------------------------------------------------
# jars and java
# --------------------------------------------------------------------------------------------------


def _pom_digest(kafka_dir: Path) -> str:
    return hashlib.sha256((kafka_dir / "pom.xml").read_bytes()).hexdigest()


def _lib_is_current(lib: Path, kafka_dir: Path, digest: str) -> bool:
    """True if ``lib`` was resolved from the current ``pom.xml``.

    The ``lib/.resolved`` marker holds the pom's sha256; an empty marker (``make setup`` touches it
    after running the same mvn command) counts when it is newer than the pom.
    """
    marker = lib / _RESOLVED_MARKER
    try:
        content = marker.read_text().strip()
        fresh = content == digest or (
            not content and marker.stat().st_mtime >= (kafka_dir / "pom.xml").stat().st_mtime
        )
    except OSError:
        return False
    return fresh and any(lib.glob("kafka_2.13-*.jar"))


def resolve_jars(kafka_dir: Path = KAFKA_DIR) -> Path:
    """Make sure ``<kafka_dir>/lib`` holds every jar the broker needs and return that directory.

    Runs ``mvn -q dependency:copy-dependencies -DoutputDirectory=lib -DincludeScope=runtime`` in
    ``kafka_dir`` when ``lib/`` is missing, empty or was resolved from a different ``pom.xml``
    (a ``lib/.resolved`` marker holds the pom's sha256). Once done this costs one small file read.
    Maven is first tried offline (``-o``) so that a warm ``~/.m2`` needs no network at all.

    Raises:
        BrokerError: Maven is not installed or the resolve failed.
    """
    kafka_dir = Path(kafka_dir)
    lib = kafka_dir / "lib"
    digest = _pom_digest(kafka_dir)
    if _lib_is_current(lib, kafka_dir, digest):
        return lib

    # Two test sessions may resolve at once: serialise them on a lock file inside the (ignored) lib/.
    lib.mkdir(parents=True, exist_ok=True)
    with (lib / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _lib_is_current(lib, kafka_dir, digest):
            return lib
        return _copy_dependencies(kafka_dir, lib, digest)


def _copy_dependencies(kafka_dir: Path, lib: Path, digest: str) -> Path:
    mvn = shutil.which(os.environ.get("MVN", "mvn"))
    if mvn is None:
        raise BrokerError(
            f"Maven ('mvn') is not on PATH, and {lib} has no resolved Kafka jars. Install Maven 3.8+ "
            f"(or set MVN), or run 'mvn -q dependency:copy-dependencies -DoutputDirectory=lib "
            f"-DincludeScope=runtime' in {kafka_dir} on a machine that has it."
        )
    # Stale jars from another pom version would end up on the same class path: clear them first.
    for jar in lib.glob("*.jar"):
        jar.unlink()
    goal = ["dependency:copy-dependencies", "-DoutputDirectory=lib", "-DincludeScope=runtime"]
    failure = ""
    for offline in (["-o"], []):
        proc = subprocess.run(
            [mvn, "-q", "-B", *offline, *goal],
            cwd=kafka_dir,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode == 0 and any(lib.glob("kafka_2.13-*.jar")):
            (lib / _RESOLVED_MARKER).write_text(digest + "\n")
            return lib
        failure = (proc.stdout + proc.stderr)[-4000:]
    raise BrokerError(f"'mvn {' '.join(goal)}' failed in {kafka_dir}:\n{failure}")


def java_major_version(java: str) -> int:
    """Return the major version of the given java binary (``8`` for ``1.8.0_x``, ``17`` for ``17.0.2``).

    Raises:
        BrokerError: the binary is missing or its version cannot be read.
    """
    exe = shutil.which(java)
    if exe is None:
        raise BrokerError(
            f"Java not found ({java!r}). Install a JDK/JRE >= {MIN_JAVA_MAJOR} "
            "or set JAVA to its java binary."
        )
    try:
        proc = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerError(f"could not run '{exe} -version': {exc}") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if match is None:
        raise BrokerError(f"could not read the Java version from '{exe} -version':\n{proc.stderr}")
    major = int(match.group(1))
    if major == 1 and match.group(2):
        major = int(match.group(2))
    return major


def check_java(java: str) -> None:
    """Raise :class:`BrokerError` unless ``java`` is Java 17 or newer (what Kafka 4 brokers require)."""
    major = java_major_version(java)
    if major < MIN_JAVA_MAJOR:
        raise BrokerError(
            f"{java} is Java {major}; the Kafka 4 broker needs Java >= {MIN_JAVA_MAJOR}. "
            f"Set JAVA to a newer java binary."
        )


def default_java() -> str:
    """The java binary to use: ``$JAVA`` if set, else ``java`` from ``PATH``."""
    return os.environ.get("JAVA") or "java"


# --------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1, free right now: each socket is held until all are
    bound, so the OS cannot hand the same port out twice (``free_port`` called in a row may)."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def port_in_use(port: int) -> bool:
    """True if something listens on ``127.0.0.1:port``; leftover TIME_WAIT connections don't count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the JVM's server sockets do
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
        return False


def _port_accepts(port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def new_cluster_id() -> str:
    """A random KRaft cluster id in Kafka's format (URL-safe base64 of 16 bytes, no padding)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not cid.startswith("-"):  # would be read as an option by the format tool
            return cid


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no {path.name})"
    return "\n".join(text.splitlines()[-lines:]) or f"({path.name} is empty)"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _lines_since(path: Path, offset: int) -> list[str]:
    """The non-blank lines of ``path`` from byte ``offset`` on (all of them when it has since been
    rolled over and is shorter), as said on the terminal (``shown_line``); none when it cannot be read."""
    try:
        with path.open("rb") as log:
            log.seek(offset if _size(path) >= offset else 0)
            text = log.read().decode(errors="replace")
    except OSError:
        return []
    return [shown_line(line) for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class LogMark:
    """Where a log that another process writes, and may roll, stood at a moment: for the lines since.

    log4j rolls the broker's ``server.log`` at 20 MB (``deploy/kafka/log4j2.yaml``: it becomes
    ``server.log.1``, an older ``.1`` becomes ``.2``, and a new ``server.log`` begins). A byte offset
    alone, read in the new file once it had grown past it, left out its first lines and the rolled
    file's end, and began mid-line; so the file is kept too (its inode) and found again after a roll.
    """

    path: Path
    offset: int = 0
    inode: int | None = None  # None: there was no file yet

    @classmethod
    def at_end(cls, path: Path) -> LogMark:
        """The end of ``path`` now (its start when there is none yet)."""
        try:
            stat = path.stat()
        except OSError:
            return cls(path)
        return cls(path, stat.st_size, stat.st_ino)

    def lines_since(self) -> list[str]:
        """The non-blank lines written to the log since the mark, as said on the terminal: from the
        mark in its file, rolled since or not, then every file rolled after it and the current one
        whole. A file cut shorter than the mark in place is read from its start."""
        if self.inode is None or _inode(self.path) in (None, self.inode):
            return _lines_since(self.path, self.offset)
        rolled = [self.path.with_name(f"{self.path.name}.{index}") for index in range(1, 100)]
        rolled = [path for path in rolled if path.exists()]
        marked = next((n for n, path in enumerate(rolled) if _inode(path) == self.inode), None)
        if marked is None:  # rolled out of reach (or deleted): what the new file holds is all this start's
            return _lines_since(self.path, 0)
        since = _lines_since(rolled[marked], self.offset)
        for path in reversed(rolled[:marked]):
            since += _lines_since(path, 0)
        return since + _lines_since(self.path, 0)


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        with contextlib.suppress(OSError):
            # "pid (comm) S ...": the state letter follows the last ')'.
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
            return state not in ("Z", "X")
    return True


def _is_our_broker(pid: int, config: Path) -> bool:
    """Guard against pid reuse: the process must be ``kafka.Kafka`` running ``config``."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():  # not Linux: trust the pid file
        return _pid_alive(pid)
    try:
        args = cmdline.read_bytes().split(b"\0")
    except OSError:
        return False
    return b"kafka.Kafka" in args and str(config).encode() in args


def read_properties(path: Path) -> dict[str, str]:
    """Parse the simple ``key=value`` lines of a Java properties file (no continuations)."""
    props: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "!")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        props[key.strip()] = value.strip()
    return props


# --------------------------------------------------------------------------------------------------
# the broker
# --------------------------------------------------------------------------------------------------


class LocalKafka:
    """One real Kafka 4 broker+controller (KRaft) on 127.0.0.1, its state in ``data_dir``.

    Args:
        data_dir: where config, KRaft log dir, broker logs and the pid file live; created if missing.
            Reusing it keeps the topics and their messages.
        port: the client (PLAINTEXT) port.
        controller_port: the KRaft controller port.
        lib_dir: directory with the Kafka jars; default: :func:`resolve_jars` (``deploy/kafka/lib``).
        java: java binary; default ``$JAVA`` or ``java`` on PATH. Must be Java >= 17.
        heap_mb: JVM max heap (``-Xmx``); kept small as the machine is shared with the tests.
        kafka_dir: where ``server.properties.template``, ``log4j2.yaml`` and ``pom.xml`` live.
        extra_properties: broker settings added after the template's (a key set there is overridden):
            more listeners, SASL users, TLS key stores, as the security tests need.

    After :meth:`start` returns, ``cold_start_s`` holds the seconds from the first start step (rendering
    the config, formatting a fresh data dir, launching the JVM) to the broker answering an admin client,
    and ``formatted`` says whether this start had to format the data dir. Jar resolution and the Java
    version check are not counted.
    """

    def __init__(
        self,
        data_dir: Path | str,
        port: int = DEFAULT_PORT,
        controller_port: int = DEFAULT_CONTROLLER_PORT,
        lib_dir: Path | None = None,
        java: str | None = None,
        heap_mb: int = 512,
        kafka_dir: Path = KAFKA_DIR,
        extra_properties: Mapping[str, str] | None = None,
    ) -> None:
        if port == controller_port:
            raise ValueError("port and controller_port must differ")
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.controller_port = controller_port
        self.lib_dir = lib_dir
        self.java = java or default_java()
        self.heap_mb = heap_mb
        self.kafka_dir = Path(kafka_dir)
        self.extra_properties = dict(extra_properties or {})
        self.cold_start_s: float | None = None
        self.formatted = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        # Where this start's lines begin in broker.out and server.log, which keep every run's.
        self._out_start = 0
        self._server_log_mark = LogMark(self.log_path)

    # -- paths -------------------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """The ``host:port`` clients bootstrap from."""
        return f"127.0.0.1:{self.port}"

    @property
    def connection(self) -> dict[str, Any]:
        """The settings that reach this broker (``load_settings(**broker.connection, ...)``): its
        PLAINTEXT listener, whatever protocol, SASL login or CA the shell's ``SKUFORGE_KAFKA_*`` give
        for another cluster."""
        return {
            "kafka_bootstrap": self.bootstrap,
            "kafka_security_protocol": "PLAINTEXT",
            "kafka_sasl_username": None,
            "kafka_sasl_password": None,
            "kafka_ssl_cafile": None,
        }

    @property
    def config_path(self) -> Path:
        """The rendered ``server.properties`` in the data dir."""
        return self.data_dir / CONFIG_FILE

    @property
    def pid_path(self) -> Path:
        """The pid file another process uses to find (and stop) this broker."""
        return self.data_dir / PID_FILE

    @property
    def log_path(self) -> Path:
        """The broker's main log file (log4j2)."""
        return self.data_dir / LOG4J_DIR / "server.log"

    @property
    def out_path(self) -> Path:
        """The JVM's stdout/stderr."""
        return self.data_dir / OUT_FILE

    @property
    def pid(self) -> int | None:
        """Pid of the broker JVM, from the live process handle or the pid file; None if not known."""
        if self._proc is not None:
            return self._proc.pid
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        # A damaged 0 or -1 passed for a live broker (kill(0 or -1, 0) signals a group), and stopping
        # that "broker" sent SIGTERM to the caller's own process group.
        return pid if pid > 0 else None

    @classmethod
    def from_data_dir(cls, data_dir: Path | str, **kwargs: Any) -> LocalKafka:
        """A handle on the broker whose rendered config is in ``data_dir`` (ports read from it: the
        PLAINTEXT listener's, which ``connection`` speaks, and the CONTROLLER's; others are left alone)."""
        data_dir = Path(data_dir)
        ports: dict[str, int] = {}
        config = data_dir / CONFIG_FILE
        if config.exists():
            props = read_properties(config)
            listeners = [item.strip() for item in props.get("listeners", "").split(",") if item.strip()]
            for listener in listeners:
                name, _, rest = listener.partition("://")
                port = rest.rpartition(":")[2]
                # isascii: isdigit() also takes "²" (int() then fails) and "٩٠٩٢" (int() reads 9092).
                if not (port.isascii() and port.isdigit()):
                    raise BrokerError(f"{config}: listener {listener!r} has no port in ASCII digits (0-9)")
                if name in _PORT_OF_LISTENER:
                    ports[_PORT_OF_LISTENER[name]] = int(port)
            # PLAINTEXT only: the last listener but CONTROLLER was taken (a TLS one of extra_properties,
            # printed by status as the bootstrap), and without one the default port (another broker's).
            if listeners and "port" not in ports:
                raise BrokerError(
                    f"{config}: no PLAINTEXT listener (the one clients bootstrap from) in "
                    f"listeners={props['listeners']}"
                )
        return cls(data_dir, **{**ports, **kwargs})

    # -- lifecycle ---------------------------------------------------------------------------------

    def is_running(self) -> bool:
        """True if the broker JVM of this data dir is alive (started here or by another process)."""
        if self._proc is not None:
            return self._proc.poll() is None
        pid = self.pid
        return pid is not None and _pid_alive(pid) and _is_our_broker(pid, self.config_path)

    def start(self, timeout_s: float = 90, *, stop_with_parent: bool = False) -> None:
        """Start the broker and block until it serves admin requests.

        Formats the KRaft log dir first if this data dir was never formatted (the cluster id is kept
        in ``data_dir/cluster.id``). ``stop_with_parent``: the kernel sends the JVM SIGTERM when this
        process dies, however it dies (Linux), for a launcher that stays attached (``--foreground``).

        Raises:
            BrokerError: already running, a port is taken, the JVM exited early, or it was not ready
                within ``timeout_s`` (the broker is then killed). The message ends with the log tail.
        """
        if self.is_running():
            raise BrokerError(f"a broker is already running from {self.data_dir} (pid {self.pid})")
        lib = self.lib_dir or resolve_jars(self.kafka_dir)
        check_java(self.java)
        for port in (self.port, self.controller_port):
            if port_in_use(port):
                raise BrokerError(f"port {port} on 127.0.0.1 is already in use; choose another")

        t0 = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._render_config()
        self.formatted = self._format_if_needed(lib)

        self._out = self.out_path.open("ab")
        self._out_start = self._out.tell()
        self._server_log_mark = LogMark.at_end(self.log_path)  # log4j may roll it meanwhile
        cmd = [
            self.java,
            *self._jvm_options(),
            "-cp",
            str(Path(lib).resolve() / "*"),
            "kafka.Kafka",
            str(self.config_path),
        ]
        self._proc = subprocess.Popen(
            cmd,
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own session and process group: signals from a terminal don't reach it
            # Its own session also keeps it out of a SIGKILL to the launcher's group (a supervisor's
            # restart): without this it ran on, and every new launcher found "a broker already running".
            preexec_fn=parent_death_signal() if stop_with_parent else None,
        )
        self.pid_path.write_text(f"{self._proc.pid}\n")
        try:
            self._wait_ready(t0 + timeout_s)
        except BaseException:
            self._kill_now()
            raise
        self.cold_start_s = time.monotonic() - t0

    def exit_said(self, lines: int = 8) -> list[str]:
        """Once the JVM :meth:`start` spawned has exited: the last ``lines`` lines it wrote to
        ``broker.out`` (the errors it logged: a log dir on a full disk, an OutOfMemoryError), then one
        line of how it exited and where its whole log is. ``--foreground`` ends with these, which the
        supervisor of ``skuforge up`` shows: "kafka exited" alone named neither code nor reason."""
        assert self._proc is not None and self._proc.returncode is not None
        how = f"{exit_reason(self._proc.returncode)}; its log: {self.log_path}"
        return [
            *_lines_since(self.out_path, self._out_start)[-lines:],
            f"kafka: the broker's JVM (pid {self._proc.pid}) {how}",
        ]

    def stop(self, timeout_s: float = 30) -> None:
        """Stop the broker: SIGTERM (a clean controlled shutdown), then SIGKILL after ``timeout_s``.

        Works on a broker started by another process, through the pid file. A no-op if none runs.
        """
        pid = self.pid
        if pid is not None and (self._proc is not None or _is_our_broker(pid, self.config_path)):
            self._signal(pid, signal.SIGTERM)
            if not self._wait_exit(pid, timeout_s):
                self._signal(pid, signal.SIGKILL)
                self._wait_exit(pid, 10)
        self._release()

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalKafka(data_dir={str(self.data_dir)!r}, bootstrap={self.bootstrap!r})"

    # -- internals ---------------------------------------------------------------------------------

    def _jvm_options(self) -> list[str]:
        return [
            f"-Xmx{self.heap_mb}m",
            f"-Xms{min(self.heap_mb, 128)}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.data_dir / LOG4J_DIR}",
            f"-Dlog4j2.configurationFile={(self.kafka_dir / 'log4j2.yaml').resolve()}",
        ]

    def _render_config(self) -> None:
        values = {
            "@CLIENT_PORT@": str(self.port),
            "@CONTROLLER_PORT@": str(self.controller_port),
            "@LOG_DIR@": str(self.data_dir / LOG_DIR),
        }
        lines = []
        for line in (self.kafka_dir / "server.properties.template").read_text().splitlines():
            if not line.lstrip().startswith("#"):  # comments document the placeholders: leave them
                for key, value in values.items():
                    line = line.replace(key, value)
                leftover = _PLACEHOLDER.findall(line)
                if leftover:
                    raise BrokerError(f"server.properties.template has unknown placeholders: {leftover}")
            lines.append(line)
        if self.extra_properties:  # a properties file's last value of a key wins
            lines += [
                "",
                "# extra_properties",
                *(f"{key}={value}" for key, value in self.extra_properties.items()),
            ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _format_if_needed(self, lib: Path) -> bool:
        if (self.data_dir / LOG_DIR / "meta.properties").exists():
            return False
        id_file = self.data_dir / CLUSTER_ID_FILE
        cluster_id = id_file.read_text().strip() if id_file.exists() else ""
        if not cluster_id:
            cluster_id = new_cluster_id()
            id_file.write_text(cluster_id + "\n")
        cmd = [
            self.java,
            "-Xmx256m",
            f"-Dlog4j2.configurationFile={(self.kafka_dir / 'log4j2.yaml').resolve()}",
            f"-Dkafka.logs.dir={self.data_dir / LOG4J_DIR}",
            "-cp",
            str(Path(lib).resolve() / "*"),
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            cluster_id,
            "--config",
            str(self.config_path),
            "--ignore-formatted",
        ]
        log = self.data_dir / FORMAT_LOG
        with log.open("wb") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=120, check=False)
        if proc.returncode != 0:
            raise BrokerError(
                f"formatting {self.data_dir / LOG_DIR} failed (exit {proc.returncode}):\n{_tail(log)}"
            )
        return True

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        last_error = "the client port never accepted a connection"
        while True:
            if self._proc.poll() is not None:
                raise BrokerError(
                    f"the Kafka broker exited with code {self._proc.returncode} before it was ready.\n"
                    f"{self._log_tails()}"
                )
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"the Kafka broker was not ready in time ({last_error}).\n{self._log_tails()}"
                )
            if _port_accepts(self.port):
                remaining_ms = max(1000, int((deadline - time.monotonic()) * 1000))
                try:
                    if self._admin_ready(min(remaining_ms, 10_000)):
                        return
                    last_error = "the broker is not yet registered and unfenced"
                except Exception as exc:  # kafka-python raises many kinds while a broker boots
                    last_error = f"admin client: {type(exc).__name__}: {exc}"
            time.sleep(0.2)

    def _admin_ready(self, timeout_ms: int) -> bool:
        from kafka import KafkaAdminClient  # imported late: the CLI's stop/status don't need it

        admin = KafkaAdminClient(
            bootstrap_servers=self.bootstrap,
            client_id="skuforge-broker-probe",
            request_timeout_ms=timeout_ms,
            bootstrap_timeout_ms=timeout_ms,
        )
        try:
            cluster = admin.describe_cluster()
            admin.list_topics()
        finally:
            admin.close()
        brokers = cluster.get("brokers") or []
        return any(not b.get("is_fenced", False) for b in brokers)

    def _log_tails(self) -> str:
        """The last lines this start wrote to broker.out and server.log: their earlier runs' lines, above
        a start that failed before it logged much, read as its own errors."""
        none = "(none from this start)"
        out = "\n".join(_lines_since(self.out_path, self._out_start)[-20:]) or none
        server = "\n".join(self._server_log_mark.lines_since()[-40:]) or none
        return f"--- {self.out_path} (tail) ---\n{out}\n--- {self.log_path} (tail) ---\n{server}"

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            try:
                pgid = os.getpgid(pid)
            except ProcessLookupError:
                return
            if pgid == pid:  # we started it as a group leader: signal the whole group
                os.killpg(pgid, sig)
            else:
                os.kill(pid, sig)

    def _wait_exit(self, pid: int, timeout_s: float) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(timeout=timeout_s)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return True
            time.sleep(0.1)
        return not _pid_alive(pid)

    def _kill_now(self) -> None:
        if self._proc is not None:
            self._signal(self._proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)
        self._release()

    def _release(self) -> None:
        self._proc = None
        if self._out is not None:
            self._out.close()
            self._out = None
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------


PORT_NUMBER = int_between(1, 65535)
HEAP_MB = int_between(64, 1_048_576)
# Options of `start` whose default an environment variable may set: (dest, variable, default, type).
ENV_DEFAULTS: tuple[tuple[str, str, int, Callable[[str], int]], ...] = (
    ("port", "SKUFORGE_KAFKA_PORT", DEFAULT_PORT, PORT_NUMBER),
    ("controller_port", "SKUFORGE_KAFKA_CONTROLLER_PORT", DEFAULT_CONTROLLER_PORT, PORT_NUMBER),
    ("heap_mb", "SKUFORGE_KAFKA_HEAP_MB", 512, HEAP_MB),
)


def _apply_env_defaults(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill the options not given from their environment variables, held to the options' own bounds:
    argparse would not check a default (``SKUFORGE_KAFKA_PORT=70000`` ended in an OverflowError)."""
    for dest, name, default, parse in ENV_DEFAULTS:
        if getattr(args, dest) is not None:  # given on the command line: the variable does not count
            continue
        value = os.environ.get(name)
        try:
            setattr(args, dest, parse(value) if value else default)
        except argparse.ArgumentTypeError as exc:  # int_between refuses what int() would not read, too
            parser.error(f"{name}={value!r}: {exc}; fix or unset it, or give the option")


def _parser(prog: str) -> argparse.ArgumentParser:
    data_dir = Path(os.environ.get("SKUFORGE_KAFKA_DATA_DIR") or DEFAULT_DATA_DIR)
    parser = CommandParser(
        prog=prog,
        description="Run the real single-node Kafka broker (KRaft) used by skuforge tests and local runs.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add_data_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data-dir",
            type=path_argument("folder"),
            default=data_dir,
            help=f"broker state dir (env SKUFORGE_KAFKA_DATA_DIR; default {data_dir})",
        )

    start = sub.add_parser(
        "start", help="start the broker, wait until it is ready, print the bootstrap address"
    )
    add_data_dir(start)
    start.add_argument(
        "--port",
        type=PORT_NUMBER,
        default=None,
        help=f"client port (default: env SKUFORGE_KAFKA_PORT, else {DEFAULT_PORT})",
    )
    start.add_argument(
        "--controller-port",
        type=PORT_NUMBER,
        default=None,
        help="KRaft controller port, not the client port (default: env SKUFORGE_KAFKA_CONTROLLER_PORT, else "
        f"{DEFAULT_CONTROLLER_PORT})",
    )
    start.add_argument(
        "--heap-mb",
        type=HEAP_MB,
        default=None,
        help="JVM max heap in MiB (default: env SKUFORGE_KAFKA_HEAP_MB, else 512)",
    )
    start.add_argument(
        "--timeout",
        type=positive_float,
        default=90.0,
        help="seconds to wait for readiness (default %(default)g)",
    )
    start.add_argument(
        "--foreground",
        action="store_true",
        help="stay attached; stop the broker on Ctrl-C / SIGTERM, or when this process is killed",
    )

    stop = sub.add_parser("stop", help="stop the broker whose pid file is in the data dir")
    add_data_dir(stop)
    stop.add_argument(
        "--timeout", type=positive_float, default=30.0, help="seconds before SIGKILL (default %(default)g)"
    )

    status = sub.add_parser(
        "status",
        help="exit 0 and print the bootstrap address if the broker runs, exit 3 if not",
        description="Print the bootstrap address of the broker whose pid file is in the data dir.",
        epilog="exit status: 0 the broker runs; 1 its files in the data dir cannot be read; 2 a usage "
        "error; 3 no broker is running from the data dir",
    )
    add_data_dir(status)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "python -m devstack.broker") -> int:
    """Entry point of ``python -m devstack.broker`` and ``skuforge kafka`` (``prog``, as its usage
    names it); returns the exit status."""
    parser = _parser(prog)
    args = parser.parse_args(argv)
    # A file there was "[Errno 17] File exists" from start (exit 1), and from stop "no broker running"
    # followed by "[Errno 20] Not a directory"; start must also be able to write there.
    if problem := folder_problem(args.data_dir, writable=args.command == "start"):
        parser.error(f"--data-dir {args.data_dir}: {problem}")
    if args.command == "start":
        _apply_env_defaults(parser, args)
        if args.port == args.controller_port:  # here, not LocalKafka's ValueError: a usage error, exit 2
            parser.error(
                f"--port and --controller-port are both {args.port} (options, SKUFORGE_KAFKA_PORT / "
                "SKUFORGE_KAFKA_CONTROLLER_PORT or the defaults); the broker needs two ports"
            )
    try:
        if args.command == "start":
            broker = LocalKafka(
                args.data_dir, port=args.port, controller_port=args.controller_port, heap_mb=args.heap_mb
            )
            if args.foreground:
                # From before the start: a supervisor stopping (or dying) while the broker starts sends
                # SIGTERM, and the JVM, in a session of its own, would outlive a launcher that just died.
                # start() kills the JVM it spawned when interrupted.
                signal.signal(signal.SIGTERM, raise_stopped)
                try:
                    broker.start(timeout_s=args.timeout, stop_with_parent=True)
                except KeyboardInterrupt:
                    print("kafka start interrupted; broker stopped", file=sys.stderr)
                    return 130
            else:
                broker.start(timeout_s=args.timeout)
            kind = "fresh data dir" if broker.formatted else "existing data dir"
            print(broker.bootstrap, flush=True)
            print(
                f"kafka ready in {broker.cold_start_s:.1f}s ({kind}); pid {broker.pid}; "
                f"logs in {broker.log_path}",
                file=sys.stderr,
                flush=True,
            )
            if args.foreground:
                try:
                    while broker.is_running():
                        time.sleep(0.5)
                    for line in broker.exit_said():
                        print(line, file=sys.stderr)
                    return 1
                except KeyboardInterrupt:
                    pass
                finally:
                    broker.stop()
            return 0
        broker = LocalKafka.from_data_dir(args.data_dir)
        if args.command == "stop":
            if not broker.is_running():
                print(f"no broker running from {broker.data_dir}", file=sys.stderr)
                broker.stop()  # clears a stale pid file
                return 0
            pid = broker.pid
            broker.stop(timeout_s=args.timeout)
            print(f"stopped kafka (pid {pid})", file=sys.stderr)
            return 0
        if broker.is_running():
            print(broker.bootstrap)
            print(f"running, pid {broker.pid}, data dir {broker.data_dir}", file=sys.stderr)
            return 0
        print(f"not running (data dir {broker.data_dir})", file=sys.stderr)
        return 3
    except (BrokerError, ValueError, OSError) as exc:  # ports that clash, a data dir that is a file...
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
