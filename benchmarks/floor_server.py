"""The floor: a minimal aiohttp server that returns a prebuilt body. Usage: floor_server.py BODY PORT"""

import sys
from pathlib import Path

from aiohttp import web

body = Path(sys.argv[1]).read_bytes()


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


app = web.Application()
app.router.add_get("/metrics", metrics)
app.router.add_get("/", metrics)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None, access_log=None)
