"""A bounded wait, before MultiWorkerMirroredStrategy starts, until every other task (the chief
and the workers) answers.

TensorFlow's own wait for the other workers has no deadline that it keeps (measured with 2.21:
it waits past `cluster_register_timeout_in_ms`, holding the GIL), so a worker whose peers never
come up would hang until the Job's deadline. Each worker therefore first listens on its own
worker port and connects to every peer's; once all have answered it closes its listener, and
TensorFlow's gRPC server takes the port over. A peer that has already moved on answers through
that server, so the order in which workers arrive does not matter.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Sequence

from trainer.errors import TransientError
from trainer.logs import get_logger

CONNECT_SECONDS = 2.0
RETRY_SECONDS = 0.5


def wait_for_peers(addresses: Sequence[str], own: str, timeout: float) -> None:
    """Return once every task in `addresses` (chief and workers) but this one, at `own`,
    accepts a TCP connection; TransientError (75) naming the ones that did not after `timeout`
    seconds."""
    peers = [address for address in addresses if address != own]
    _, port = _host_and_port(own)
    try:
        listener = _listen(port)
    except OSError as error:
        raise TransientError(f"worker port {port} cannot be opened on this node "
                             f"({error.strerror}); free it or change WORKER_PORT") from error
    closing = threading.Event()
    answering = threading.Thread(target=_answer, args=(listener, closing), daemon=True)
    answering.start()
    try:
        _reach(peers, timeout)
    finally:
        closing.set()
        answering.join()
        listener.close()


def _reach(peers: list[str], timeout: float) -> None:
    log = get_logger()
    deadline = time.monotonic() + timeout
    waiting = {peer: "not tried" for peer in peers}
    announced = False
    while True:
        for peer in list(waiting):
            reason = _unreachable_because(peer)
            if reason is None:
                del waiting[peer]
            else:
                waiting[peer] = reason
        if not waiting:
            log.info("every peer worker answered", extra={"peers": peers})
            return
        if time.monotonic() >= deadline:
            named = ", ".join(f"{peer} ({reason})" for peer, reason in sorted(waiting.items()))
            raise TransientError(
                f"could not reach worker(s) {named} within PEER_TIMEOUT={timeout:g} s; check "
                "that their pods run, and WORKER_SERVICE, WORKER_PORT or TF_CONFIG name them"
            )
        if not announced:
            announced = True
            log.info("waiting for peer workers", extra={"waiting_for": sorted(waiting),
                                                        "peer_timeout": timeout})
        time.sleep(RETRY_SECONDS)


def _unreachable_because(peer: str) -> str | None:
    try:
        with socket.create_connection(_host_and_port(peer), timeout=CONNECT_SECONDS):
            return None
    except socket.gaierror:
        return "name not resolved"
    except TimeoutError:
        return "timed out"
    except ConnectionRefusedError:
        return "connection refused"
    except (OSError, ValueError) as error:
        return type(error).__name__


def _host_and_port(address: str) -> tuple[str, int]:
    """("host", port) of "host:port" or "[v6 address]:port"."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _listen(port: int) -> socket.socket:
    if socket.has_dualstack_ipv6():
        listener = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
    else:
        listener = socket.create_server(("", port))
    listener.settimeout(0.2)
    return listener


def _answer(listener: socket.socket, closing: threading.Event) -> None:
    """Accept peers' probes until closing; each probe closes first, so this port keeps no
    TIME_WAIT that could stand in the way of TensorFlow's server."""
    while not closing.is_set():
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        with connection:
            connection.settimeout(CONNECT_SECONDS)
            with contextlib.suppress(OSError):
                connection.recv(1)
