"""The intake ceiling: a Starlette app that reads the callback body and answers 200, served
with exactly the uvicorn settings ``receiver serve`` uses (receiver/cli.py)."""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def hook(request: Request) -> Response:
    await request.body()
    return JSONResponse({"status": "accepted"})


app = Starlette(routes=[Route("/v1/hooks/{provider}/{token}", hook, methods=["POST"])])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",
        timeout_graceful_shutdown=21,
    )


if __name__ == "__main__":
    main()
