"""Fixtures: real `sotto-relay` processes on 127.0.0.1 (QUIC, port chosen by the system),
and the options the tests open profiles with."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import sotto


def relay_binary() -> str:
    """`$SOTTO_RELAY_BIN`, else `sotto-relay` in the cargo target directory."""
    explicit = os.environ.get("SOTTO_RELAY_BIN")
    if explicit:
        return explicit
    target = os.environ.get("CARGO_TARGET_DIR") or str(
        Path(__file__).resolve().parents[3] / "target"
    )
    return str(Path(target) / "debug" / "sotto-relay")


class Relay:
    """A running `sotto-relay run`; `address` is the sotto:// line it printed."""

    def __init__(self, data: Path):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOTTO_RELAY_")}
        # Deliver at once instead of after a random delay: the tests wait for messages.
        env["SOTTO_RELAY_DELIVERY_MODE"] = "off"
        env["RUST_LOG"] = "warn"
        self.proc = subprocess.Popen(
            [relay_binary(), "run", "--data", str(data), "--listen", "127.0.0.1:0",
             "--metrics", "off"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        assert self.proc.stdout is not None
        self.address = self.proc.stdout.readline().strip()
        if not self.address.startswith("sotto://"):
            self.stop()
            raise RuntimeError(f"sotto-relay did not print its address (got {self.address!r})")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def relays():
    """Two relays, stopped after the test."""
    data = Path(tempfile.mkdtemp(prefix="sotto-relays-"))
    started = []
    try:
        for name in ("a", "b"):
            started.append(Relay(data / name))
        yield [r.address for r in started]
    finally:
        for r in started:
            r.stop()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def options() -> sotto.ProfileOptions:
    """No delay before automatic replies and a cheap key derivation: tests only."""
    return sotto.ProfileOptions(auto_delay_secs=0.0, insecure_fast_kdf=True)
