"""The hand-written floor for archiving: a pool of threads, each GETs an image with httpx
and PUTs it with boto3. No ledger, no sidecar, no checks beyond the status code.

``python -m bench.baseline --origin URL --count N --endpoint URL --bucket B --prefix P``
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor

import boto3
import httpx
from botocore.config import Config

from .common import S3_KEY_ID, S3_REGION, S3_SECRET


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--origin", required=True, help="listing URL, ending with /")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--concurrency", type=int, default=16)
    args = p.parse_args()
    s3 = boto3.session.Session().client(
        "s3",
        endpoint_url=args.endpoint,
        aws_access_key_id=S3_KEY_ID,
        aws_secret_access_key=S3_SECRET,
        config=Config(
            region_name=S3_REGION,
            max_pool_connections=args.concurrency,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
        ),
    )
    limits = httpx.Limits(max_connections=args.concurrency)
    with httpx.Client(limits=limits, timeout=60.0) as http:

        def copy(index: int) -> None:
            name = f"img_{index:05d}.png"
            response = http.get(args.origin + name)
            response.raise_for_status()
            s3.put_object(
                Bucket=args.bucket,
                Key=f"{args.prefix}/{name}",
                Body=response.content,
                ContentType="image/png",
            )

        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(copy, range(args.count)))


if __name__ == "__main__":
    main()
