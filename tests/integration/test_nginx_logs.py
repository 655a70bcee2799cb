"""Issue 12, finding 12: the compose nginx logs requests without hook tokens or access tokens.

The real nginx runs infra/compose/nginx.conf (upstreams pointed at a loopback stand-in, the
listen port and log file moved into the test's folder) and the access log is read back."""

from __future__ import annotations

import http.server
import re
import subprocess
import threading
import time
from pathlib import Path

import httpx

from tests.helpers import free_port, needs

CONF = Path(__file__).resolve().parents[2] / "infra" / "compose" / "nginx.conf"


class _Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        return None


@needs("nginx", "nginx-light")
def test_compose_nginx_logs_no_hook_or_access_token(tmp_path: Path) -> None:
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    port = free_port()
    log = tmp_path / "access.log"
    conf = CONF.read_text()
    conf = re.sub(
        r"server receiver-\d+:8000", f"server 127.0.0.1:{backend.server_address[1]}", conf
    )
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{port};")
    conf = conf.replace("access_log /dev/stdout", f"access_log {log}")
    conf = conf.replace(
        "error_log /dev/stderr warn;",
        f"error_log {tmp_path}/error.log warn;\npid {tmp_path}/nginx.pid;",
    )
    path = tmp_path / "nginx.conf"
    path.write_text(conf)
    nginx = subprocess.Popen(
        ["nginx", "-c", str(path), "-p", str(tmp_path), "-g", "daemon off;"],
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        token = "eyJTOKEN-SECRET.abc_def"
        assert httpx.post(f"{base}/v1/hooks/bfl/{token}", content=b"{}").status_code == 200
        assert httpx.get(f"{base}/v1/tasks/tsk_1?access_token=ACCESS-SECRET").status_code == 200
    finally:
        nginx.terminate()
        nginx.wait(10)
        backend.shutdown()
    text = log.read_text()
    assert '"path":"/v1/hooks/bfl/<token>"' in text
    assert '"path":"/v1/tasks/tsk_1"' in text
    assert "SECRET" not in text
