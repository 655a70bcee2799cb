"""moto's S3 in its own process: ``python -m bench.s3server --port N``.

A separate process keeps moto's request handling off the contenders' CPU accounting and lets
``reset`` (``POST /moto-api/reset``) free the stored objects between runs.
"""

from __future__ import annotations

import argparse
import threading

from moto.server import ThreadedMotoServer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    threading.Event().wait()


if __name__ == "__main__":
    main()
