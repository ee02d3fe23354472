"""Start a GPUStack 2.3.0 server bound to loopback only. Runs in GPUStack's own virtual environment.

With ``--gateway-mode disabled`` (required outside GPUStack's container image) the API server and the
proxy listen on 0.0.0.0 (gpustack/server/server.py: ``serving_host``; gpustack/config/config.py:
``get_proxy_listen_address``). Tests must not open ports beyond this machine, so this launcher pins
both to 127.0.0.1 and then hands over to GPUStack's own entry point with the given arguments.
"""

import sys

import uvicorn
from gpustack.config.config import Config

_uvicorn_init = uvicorn.Config.__init__


def _loopback_init(self, *args, **kwargs):
    kwargs["host"] = "127.0.0.1"
    _uvicorn_init(self, *args, **kwargs)


uvicorn.Config.__init__ = _loopback_init
Config.get_proxy_listen_address = lambda self, default="0.0.0.0": "127.0.0.1"

from gpustack.main import main  # noqa: E402 - after the patches, so that they apply

sys.argv = ["gpustack", "start", *sys.argv[1:]]
main()
