"""A local ggml-rpc-server for tests and benchmarks: started on 127.0.0.1 at a free port, killed by PID."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

START_SECONDS = 60


class RpcError(RuntimeError):
    """The server did not start."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def rpc_server(server: Path, threads: int) -> Iterator[str]:
    """``host:port`` of a running ``server`` (a ggml-rpc-server binary) on 127.0.0.1; on leaving, the
    process is killed by its PID and reaped, whatever happened."""
    port = free_port()
    log = tempfile.TemporaryFile()  # a file, not a pipe: a long run's messages never block the server
    process = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port), "-t", str(threads)],
                               stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            if process.poll() is not None:
                log.seek(0)
                tail = (log.read().decode(errors="replace").strip().splitlines() or ["no output"])[-1]
                raise RpcError(f"{server}: exited with {process.returncode}: {tail}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RpcError(f"{server}: not listening on port {port} after {START_SECONDS} s") from None
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait(timeout=30)
        log.close()
