"""The reference server for ``bench/http_node.py``: GET and PUT ``/kv/{key}`` on a plain dict.

The least an aiohttp + uvloop key-value server can do, so a node's throughput can be set against it: no
validation, no storage, no versions. PUT answers a small JSON document like a node does; GET of a
missing key is a 404. Stops on SIGTERM or SIGINT.

    python bench/trivial_server.py --port 8080 [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import uvloop
from aiohttp import web

STORE_KEY = web.AppKey("store", dict[str, bytes])


async def get_value(request: web.Request) -> web.Response:
    value = request.app[STORE_KEY].get(request.match_info["key"])
    if value is None:
        raise web.HTTPNotFound()
    return web.Response(body=value, content_type="application/octet-stream")


async def put_value(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    request.app[STORE_KEY][key] = await request.read()
    return web.json_response({"key": key})


def make_app() -> web.Application:
    app = web.Application()
    app[STORE_KEY] = {}
    app.router.add_get("/kv/{key}", get_value)
    app.router.add_put("/kv/{key}", put_value)
    return app


async def serve(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        print(f"trivial server listening on http://{host}:{port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
