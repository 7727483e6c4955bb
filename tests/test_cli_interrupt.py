"""Ctrl-C on a command that has no stop of its own to make: one line and 130, not a traceback."""

from __future__ import annotations

import signal
import subprocess
import sys
import time


def test_ctrl_c_while_a_command_waits_for_kafka_is_one_line_and_130() -> None:
    # `skuforge topics create` waits up to 30 s for an unreachable Kafka; Ctrl-C there printed
    # kafka-python's threading internals as a 30-line traceback.
    command = subprocess.Popen(
        [sys.executable, "-m", "skuforge_cli", "topics", "create"],
        env={"PATH": "/usr/bin:/bin", "SKUFORGE_KAFKA_BOOTSTRAP": "127.0.0.1:1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(6)  # imported and waiting on the broker, which never answers
        assert command.poll() is None, command.communicate()
        command.send_signal(signal.SIGINT)
        out, err = command.communicate(timeout=30)
    finally:
        if command.poll() is None:
            command.kill()
    assert command.returncode == 130
    assert out == ""
    assert err == "skuforge topics: interrupted\n"
