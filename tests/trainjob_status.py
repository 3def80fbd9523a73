"""A local HTTPS server that takes Kubeflow Trainer's TrainJob status updates as its status
server does (POST to the TrainJob's status path, a bearer token): for the reporter's own tests
(tests/tracking/test_progress.py) and a real run's (tests/test_recipe.py).

    server = StatusServer(folder)           # or the `status_server` fixture of conftest.py
    env = {**env, **server.environ(folder)}  # what the controller injects into the pod
    server.received                         # the bodies it accepted, in order
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

STATUS_PATH = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/team-a/trainjobs/digits-1/status"


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubeflow-trainer-controller")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "ca.crt", folder / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class StatusServer:
    """Accepts POST {STATUS_PATH} with `Bearer <token>`, like Kubeflow's status server."""

    def __init__(self, folder: Path) -> None:
        self.ca_file, key_file = _self_signed(folder)
        self.token = "token-1"
        self.received: list[dict] = []
        self.refused = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path != STATUS_PATH:
                    return self._answer(404, {"status": "Failure", "reason": "NotFound"})
                if self.headers.get("Authorization") != f"Bearer {server.token}":
                    server.refused += 1
                    return self._answer(403, {"status": "Failure", "reason": "Forbidden"})
                if self.headers.get("Content-Type") != "application/json":
                    return self._answer(415, {})
                server.received.append(json.loads(body))
                self._answer(200, server.received[-1])

            def _answer(self, code: int, content: dict) -> None:
                data = json.dumps(content).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca_file, key_file)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}{STATUS_PATH}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def environ(self, folder: Path, url: str | None = None) -> dict[str, str]:
        """What Kubeflow Trainer injects into the pod: the URL, the CA and the token files."""
        token = folder / "token"
        token.write_text(self.token + "\n")
        return {"KUBEFLOW_TRAINER_SERVER_URL": url or self.url,
                "KUBEFLOW_TRAINER_SERVER_CA_CERT": str(self.ca_file),
                "KUBEFLOW_TRAINER_SERVER_TOKEN": str(token)}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
