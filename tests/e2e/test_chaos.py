"""Issue 5: replicas behind nginx on PostgreSQL, losing nothing under faults.

Two `receiver serve` processes behind a real nginx, the PostgreSQL ledger, S3 through moto's
server, and the simulator as a process. During the run one replica is killed with SIGKILL and
started again, the S3 endpoint is stopped for about 20 seconds, and the origin answers 503 to
a fifth of the downloads. At the end every task must be archived exactly once.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path

import boto3
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver.signatures import verify_standard
from tests.conftest import SUMMARIES
from tests.helpers import (
    API_KEY,
    Proc,
    base_config,
    free_port,
    needs,
    wait_http,
    write_config,
)

TASKS = int(os.environ.get("CHAOS_TASKS", "1000"))
COPIES = 2  # every callback delivered twice: 50% of callbacks are duplicates
NOTIFY_SECRET = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0IQ=="
NGINX = "/usr/sbin/nginx"


class Sink:
    """The application's notification endpoint: verifies and records every delivery."""

    def __init__(self) -> None:
        self.ids: dict[str, set[str]] = defaultdict(set)
        self.deliveries = 0
        self.bad = 0
        self.lock = threading.Lock()

    async def receive(self, request: Request) -> Response:
        body = await request.body()
        try:
            verify_standard(request.headers, body, [NOTIFY_SECRET])
        except Exception:
            self.bad += 1
            return JSONResponse({}, status_code=401)
        data = json.loads(body)
        with self.lock:
            self.deliveries += 1
            self.ids[data["data"]["id"]].add(request.headers["webhook-id"])
        return JSONResponse({})


def _nginx_conf(tmp: Path, port: int, upstreams: list[int]) -> Path:
    servers = "\n".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in upstreams)
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
user root;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  upstream receivers {{
{servers}
    keepalive 32;
    keepalive_timeout 4s;
  }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 2m;
    location / {{
      proxy_pass http://receivers;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_next_upstream error timeout http_502 http_503;
      proxy_connect_timeout 2s;
      proxy_read_timeout 30s;
    }}
  }}
}}
""")
    return conf


@pytest.mark.slow
@pytest.mark.timeout(900)
@needs("nginx", "nginx-light")
def test_chaos_replicas_behind_nginx(tmp_path: Path, pg_dsn: str) -> None:
    from moto.server import ThreadedMotoServer

    # A moto server of our own, so it can be stopped and started on the same port.
    s3_port = free_port()
    s3_url = f"http://127.0.0.1:{s3_port}"
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    moto.start()
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket="chaos")

    sink = Sink()
    sink_port = free_port()
    sink_server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=[Route("/hook", sink.receive, methods=["POST"])]),
            host="127.0.0.1",
            port=sink_port,
            log_config=None,
            access_log=False,
        )
    )
    threading.Thread(target=sink_server.run, daemon=True).start()

    sim_port, lb_port = free_port(), free_port()
    ports = [free_port(), free_port()]
    lb = f"http://127.0.0.1:{lb_port}"
    sim = Proc(
        [
            "simulate",
            "--port",
            str(sim_port),
            "--delay",
            "0.3",
            "--duplicates",
            str(COPIES),
            "--download-5xx-rate",
            "0.2",
        ],
        tmp_path / "sim.log",
    )
    conf = base_config(
        tmp_path,
        public_url=lb,
        ledger_url=pg_dsn,
        default_destination="s3",
        destinations={
            "s3": {
                "type": "s3",
                "bucket": "chaos",
                "prefix": "c/",
                "endpoint_url": s3_url,
                "region": "us-east-1",
                "access_key_id": "testing",
                "secret_access_key": "testing",
            }
        },
        providers={
            "simulated": {"base_url": f"http://127.0.0.1:{sim_port}", "callback_grace_seconds": 120}
        },
        notify={
            "secret": NOTIFY_SECRET,
            "retry_base_seconds": 0.5,
            "retry_max_seconds": 3.0,
            "allowed_networks": ["127.0.0.0/8"],
        },
        worker={
            "concurrency": 16,
            "lease_seconds": 5.0,
            "poll_interval": 0.5,
            "reconcile_interval": 1.0,
            "max_attempts": 100,
            "retry_base_seconds": 0.5,
            "retry_max_seconds": 3.0,
            "shutdown_grace_seconds": 5.0,
        },
        log_level="warning",
    )
    path = write_config(tmp_path, conf)
    replicas = [
        Proc(["serve", "--port", str(p), "--config", str(path)], tmp_path / f"replica{i}.log")
        for i, p in enumerate(ports)
    ]
    (tmp_path / "body").mkdir()
    nginx = subprocess.Popen(
        [NGINX, "-c", str(_nginx_conf(tmp_path, lb_port, ports)), "-g", "daemon off;"],
        stderr=subprocess.DEVNULL,
    )
    restarted: Proc | None = None
    try:
        sim.start()
        for r in replicas:
            r.start()
        wait_http(f"http://127.0.0.1:{sim_port}/_sim/state", proc=sim.proc)
        for r, p in zip(replicas, ports, strict=True):
            wait_http(f"http://127.0.0.1:{p}/readyz", timeout=30, proc=r.proc)
        wait_http(f"{lb}/healthz")

        ids: list[str] = []
        headers = {"authorization": f"Bearer {API_KEY}"}
        notify_url = f"http://127.0.0.1:{sink_port}/hook"

        def create(i: int) -> str:
            with httpx.Client(timeout=30) as c:
                for _ in range(5):
                    r = c.post(
                        f"{lb}/v1/tasks",
                        headers={**headers, "idempotency-key": f"k{i}"},
                        json={
                            "provider": "simulated",
                            "prompt": f"chaos {i}",
                            "notify_url": notify_url,
                            "metadata": {"i": i},
                        },
                    )
                    if r.status_code in (200, 202):
                        return str(r.json()["id"])
                    time.sleep(0.5)
                raise AssertionError(r.text)

        chaos_done = threading.Event()

        def chaos() -> None:
            nonlocal restarted
            time.sleep(4)
            replicas[0].kill9()  # mid-run, with jobs in flight
            time.sleep(2)
            restarted = Proc(
                ["serve", "--port", str(ports[0]), "--config", str(path)],
                tmp_path / "replica0-again.log",
            ).start()
            time.sleep(3)
            moto.stop()  # the store goes away for about 20 seconds
            time.sleep(20)
            moto.start()
            chaos_done.set()

        chaos_thread = threading.Thread(target=chaos, daemon=True)
        chaos_thread.start()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(create, range(TASKS)))
        assert len(set(ids)) == TASKS
        chaos_done.wait(120)

        deadline = time.monotonic() + 600
        with httpx.Client(base_url=lb, headers=headers, timeout=30) as client:
            while True:
                cursor, tasks = None, []
                while True:
                    params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
                    page = client.get("/v1/tasks", params=params).json()
                    tasks.extend(page["tasks"])
                    cursor = page["next_cursor"]
                    if not cursor:
                        break
                statuses = defaultdict(int)
                for t in tasks:
                    statuses[t["status"]] += 1
                final = statuses["archived"] + statuses["failed"]
                notified = sum(1 for i in ids if sink.ids.get(i))
                if final == TASKS and notified == TASKS:
                    break
                assert time.monotonic() < deadline, f"stuck: {dict(statuses)}, notified {notified}"
                time.sleep(2)

        state = httpx.get(f"http://127.0.0.1:{sim_port}/_sim/state", timeout=30).json()
        objects: dict[str, bytes] = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="chaos", Prefix="c/"):
            for item in page.get("Contents", []):
                objects[item["Key"]] = s3.get_object(Bucket="chaos", Key=item["Key"])["Body"].read()
        images = {k: v for k, v in objects.items() if not k.endswith((".json", ".xmp"))}
        sidecars = {k for k in objects if k.endswith(".json")}
        sha_ok = 0
        unarchived = [(t["id"], t["status"], t["failure"]) for t in tasks if len(t["objects"]) != 1]
        assert not unarchived, f"{len(unarchived)} tasks lack their one image: {unarchived[:5]}"
        for t in tasks:
            [obj] = t["objects"]
            key = obj["uri"].removeprefix("s3://chaos/")
            served = state["tasks"][t["provider_task_id"]]["sha256"][0]
            if hashlib.sha256(images[key]).hexdigest() == served == obj["sha256"]:
                sha_ok += 1
        one_id = sum(1 for i in ids if len(sink.ids.get(i, ())) == 1)
        duplicates = state["callbacks_sent"] - TASKS
        summary = (
            f"CHAOS tasks={TASKS} callbacks={state['callbacks_sent']} "
            f"duplicates={duplicates} ({100 * duplicates / max(1, state['callbacks_sent']):.0f}%) "
            f"archived={statuses['archived']} failed={statuses['failed']} "
            f"images={len(images)} sidecars={len(sidecars)} sha256_ok={sha_ok} "
            f"stuck={TASKS - final} notified={len(sink.ids)} one_webhook_id={one_id} "
            f"notify_deliveries={sink.deliveries} bad_signatures={sink.bad} "
            f"downloads={state['downloads']} replica_killed=1 s3_outage_s=20 origin_5xx=20%"
        )
        print("\n" + summary)
        SUMMARIES.append(summary)
        (tmp_path.parent / "chaos-summary.txt").write_text(summary + "\n")
        assert statuses["archived"] == TASKS
        assert len(images) == TASKS and len(sidecars) == TASKS and sha_ok == TASKS
        assert (
            state["callbacks_sent"] >= COPIES * TASKS
            and duplicates / state["callbacks_sent"] >= 0.3
        )
        assert one_id == TASKS and sink.bad == 0
    finally:
        nginx.terminate()
        nginx.wait(10)
        for proc in [*replicas, *([restarted] if restarted else [])]:
            proc.stop()
        sim.stop()
        sink_server.should_exit = True
        moto.stop()
