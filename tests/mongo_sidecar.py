"""MongoDB stand-in for the test suite: a mongoeco wire server on an in-memory engine.

Run by the mongoeco virtualenv's python (``.ci/install-mongoeco``), not the project's. Prints one
line, the connection URI (``mongodb://127.0.0.1:PORT/?directConnection=true``), then serves until it
is killed or its stdin is closed (so it dies with the test process that started it).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from mongoeco.engines.memory import MemoryEngine
from mongoeco.wire.proxy import AsyncMongoEcoProxyServer


async def _stdin_closed() -> None:
    """Return when stdin reaches EOF (the parent closed the pipe or died)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass


async def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = AsyncMongoEcoProxyServer(engine=MemoryEngine(), host="127.0.0.1", port=port)
    address = await server.start()
    uri = address.uri
    if "directConnection" not in uri:
        uri += ("&" if "?" in uri else "?") + "directConnection=true"
    print(uri, flush=True)
    if sys.stdin is not None and not sys.stdin.isatty():
        await _stdin_closed()
    else:
        await asyncio.Event().wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
