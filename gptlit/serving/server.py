"""Run the app with uvicorn on a socket bound here, so a taken port or a bad host is one line, not a log."""

from __future__ import annotations

import errno
import socket
import sys
from typing import Callable

import uvicorn
from fastapi import FastAPI

from gptlit.errors import UserError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (port 0: any free port)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError, OverflowError) as err:
        raise UserError(f"host={host} port={port} is no address to listen on ({err}); "
                        "use e.g. host=127.0.0.1 port=8000") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use; stop what holds it or pass another port=N "
                            "(port=0 picks a free one)") from None
        raise UserError(f"cannot listen on {host}:{port} ({err.strerror}); pass another host= or port=") from None
    sock.listen(128)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, ending the replies in progress first when it shuts down: uvicorn would otherwise wait
    for their streams to finish, then cancel them and log each cancellation's traceback."""

    def __init__(self, config: uvicorn.Config, stopping: Callable[[], None] | None):
        super().__init__(config)
        self.stopping = stopping

    async def shutdown(self, sockets=None) -> None:
        if self.stopping is not None:
            self.stopping()
        await super().shutdown(sockets)


def serve(app: FastAPI, host: str, port: int, banner: str = "", keyed: bool = False,
          stopping: Callable[[], None] | None = None) -> None:
    """Serve ``app`` until Ctrl-C or SIGTERM; ``stopping`` is called first thing on shutdown."""
    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"{banner}http://{shown}:{bound_port}  (chat page: /, OpenAI API: /v1, health: /health)", flush=True)
    if host not in LOOPBACK and not keyed:
        print(f"warning: listening on {host}, reachable from other machines; set api_key= to require a key",
              file=sys.stderr, flush=True)
    # Ctrl-C ends the server within a few seconds even with streams open.
    config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=3)
    _Server(config, stopping).run(sockets=[sock])
