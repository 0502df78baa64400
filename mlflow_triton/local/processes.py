"""Processes the local stack starts: free loopback ports, and a child process in its own
session with a log file and an HTTP health check, stopped by the pid it was started with."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping, Sequence

logger = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1", *also_free_on: str) -> int:
    """Return a TCP port that is free on ``host`` (and on each of ``also_free_on``) right now."""
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        try:
            for other in also_free_on:
                with socket.socket() as probe:
                    probe.bind((other, port))
            return port
        except OSError:
            continue


class ManagedProcess:
    """A child process in its own session, with a log file and an HTTP health check."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        health_url: str,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.health_url = health_url
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120.0) -> "ManagedProcess":
        """Launch the process and wait until its health URL answers 200."""
        self.launch()
        self.wait_healthy(timeout_s)
        return self

    def launch(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as response:
                    if response.status == 200:
                        logger.info("%s is up (pid %d)", self.name, self.process.pid)
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not healthy after {timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the process group this object started (SIGTERM, then SIGKILL)."""
        if self.process is None or self.process.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout_s)
                return
            except subprocess.TimeoutExpired:
                continue
