"""The listening sockets, bound before anything else starts: a port in use is exit 2 at once, before any
upstream is read (the server then serves on these sockets)."""

from __future__ import annotations

import errno
import socket

from ...errors import FlagError


def bind(host: str | None, port: int, listen_address: str) -> list[socket.socket]:
    """The listening sockets, bound as asyncio's create_server binds them (every address of ``host``; all
    interfaces without one): a port in use or an address not ours is a flag to fix, said as such."""
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(infos):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:  # a family this host lacks (IPv6 off): skipped, as asyncio skips it
                continue
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # IPv4 has its own socket
            sock.bind(address)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        if isinstance(exc, socket.gaierror) or exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise FlagError(f"--web.listen-address {listen_address!r}: cannot listen there: "
                            f"{exc.strerror or exc}") from None
        raise
    if not sockets:
        raise FlagError(f"--web.listen-address {listen_address!r}: cannot listen there: no usable address")
    return sockets
