"""The wait for peer workers, on real sockets on loopback."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from conftest import free_ports

from trainer.cluster.peers import wait_for_peers
from trainer.errors import TransientError


def test_workers_arriving_at_different_times_all_find_each_other() -> None:
    ports = free_ports(3)
    workers = [f"127.0.0.1:{port}" for port in ports]
    outcomes: dict[int, object] = {}
    servers: list[socket.socket] = []

    def worker(index: int, delay: float) -> None:
        time.sleep(delay)
        try:
            wait_for_peers(workers, workers[index], timeout=30)
            # What TensorFlow's server does next: take the same port over, at once.
            servers.append(socket.create_server(("127.0.0.1", ports[index])))
            outcomes[index] = "ready"
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            outcomes[index] = error

    threads = [threading.Thread(target=worker, args=(i, delay))
               for i, delay in enumerate((0.0, 1.5, 3.0))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for server in servers:
        server.close()
    assert outcomes == {0: "ready", 1: "ready", 2: "ready"}


def test_peers_that_never_answer_are_named_after_the_timeout() -> None:
    own, silent = free_ports(2)
    workers = [f"127.0.0.1:{own}", f"127.0.0.1:{silent}", "trainer-1.no-such-service.invalid:2222"]
    with pytest.raises(TransientError) as raised:
        wait_for_peers(workers, workers[0], timeout=1.5)
    message = str(raised.value)
    assert f"127.0.0.1:{silent} (connection refused)" in message
    assert "trainer-1.no-such-service.invalid:2222 (name not resolved)" in message
    assert "PEER_TIMEOUT=1.5 s" in message and raised.value.exit_code == 75
    # The port is free again for the retried attempt (or TensorFlow's server).
    socket.create_server(("127.0.0.1", own)).close()
