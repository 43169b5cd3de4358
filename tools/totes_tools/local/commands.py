"""CLI commands for the local AWS emulation and the locally run chain."""

from __future__ import annotations

import threading

from totes_tools.local.aws import moto_server


def local_aws(args) -> int:
    """Serve the AWS emulation on 127.0.0.1 until interrupted."""
    with moto_server(args.port) as endpoint:
        print(f"local AWS endpoint: {endpoint}", flush=True)
        print(f"use: export AWS_ENDPOINT_URL={endpoint}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopping local AWS", flush=True)
    return 0


def run(args) -> int:
    from totes_tools.local.chain import run_command

    return run_command(args)
