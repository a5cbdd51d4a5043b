"""Validation in helper processes, so that a single server process uses more than one core.

The R4B models validate in Python under the GIL: on the event loop they were about a quarter of the CPU
of a create while a second core sat idle. ``Validators`` spawns helper processes that each validate the
resources sent to them over a socket pair (length-prefixed pickles, answered in order); the event loop
only pickles (~5 µs for a Patient) and awaits. A helper that is not ready yet, or has died, is replaced by
validating in-process: answers never depend on the helpers, only speed does.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import pickle
import socket
import struct
from collections import deque

from ..errors import Issue
from . import issues_of, raise_issues

log = logging.getLogger("fhir_server.validation")
_LENGTH = struct.Struct("!I")


def checked(resource: object, index: bool) -> tuple[list[Issue], list | None]:
    """The issues of ``resource`` and, if asked and it is valid, its index entries (as sent)."""
    issues = issues_of(resource)
    if issues or not index:
        return issues, None
    from ..search.indexing import index_entries

    assert isinstance(resource, dict)
    return issues, index_entries(resource)


class InProcess:
    """Validation on the calling thread (no helper processes)."""

    async def validate(self, resource: object, *, index: bool = False) -> list | None:
        """Raise ``invalid_resource`` (400) if ``resource`` is not valid R4; with ``index``, return its index
        entries as well (computed where the validation runs: off the event loop with helpers)."""
        issues, entries = checked(resource, index)
        raise_issues(issues)
        return entries

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


def _frame(obj: object) -> bytes:
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


def _serve(sock: socket.socket, content_search: bool = False) -> None:
    """A helper process: validate each resource received, answer its issues, until the socket closes."""
    from ..search.indexing import use_content_search
    from . import warm_up

    use_content_search(content_search)  # the entries it prepares are the server's
    warm_up()
    with sock, sock.makefile("rwb") as stream:
        stream.write(_frame("ready"))
        stream.flush()
        while header := stream.read(_LENGTH.size):
            resource, index = pickle.loads(stream.read(_LENGTH.unpack(header)[0]))
            try:
                answer: tuple[list[Issue], list | None] = checked(resource, index)
            except Exception as exc:  # a validator bug must not kill the helper: report it as an issue
                answer = [Issue("exception", f"Validation failed: {type(exc).__name__}")], None
            issues, entries = answer
            # Plain tuples: unpickling dozens of IndexEntry (NamedTuple) objects costs the event loop 3x more.
            stream.write(_frame((issues, None if entries is None else [tuple(e) for e in entries])))
            stream.flush()


class _Helper(asyncio.Protocol):
    """The event loop's end of one helper's socket: frames out, answers in (FIFO)."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self.process = process
        self.transport: asyncio.Transport | None = None
        self.pending: deque[asyncio.Future] = deque()
        self.ready = False
        self.alive = True
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, resource: object, index: bool) -> asyncio.Future:
        answer = asyncio.get_running_loop().create_future()
        self.pending.append(answer)
        assert self.transport is not None
        self.transport.write(_frame((resource, index)))
        return answer

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= _LENGTH.size:
            size = _LENGTH.unpack_from(buffer)[0]
            end = _LENGTH.size + size
            if len(buffer) < end:
                return
            message = pickle.loads(memoryview(buffer)[_LENGTH.size : end])
            del buffer[:end]
            if not self.ready:
                self.ready = message == "ready"
                continue
            answer = self.pending.popleft()
            if not answer.done():
                answer.set_result(message)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.alive:
            log.warning("a validation helper process stopped: validating in-process")
        self.alive = False
        while self.pending:
            answer = self.pending.popleft()
            if not answer.done():
                answer.set_exception(ConnectionError("validation helper stopped"))


class Validators(InProcess):
    def __init__(self, count: int, content_search: bool = False) -> None:
        self.count = count
        self.content_search = content_search
        self._helpers: list[_Helper] = []

    async def start(self) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads and an event loop
        loop = asyncio.get_running_loop()
        for _ in range(self.count):
            ours, theirs = socket.socketpair()
            process = context.Process(
                target=_serve, args=(theirs, self.content_search), name="fhir-validator", daemon=True
            )
            process.start()
            theirs.close()
            helper = _Helper(process)
            await loop.connect_accepted_socket(lambda h=helper: h, sock=ours)
            self._helpers.append(helper)

    async def validate(self, resource: object, *, index: bool = False) -> list | None:
        helper = min((h for h in self._helpers if h.ready and h.alive), key=lambda h: len(h.pending), default=None)
        if helper is None:
            return await super().validate(resource, index=index)
        try:
            issues, entries = await helper.send(resource, index)
        except ConnectionError:  # the helper died with this resource in flight
            return await super().validate(resource, index=index)
        raise_issues(issues)
        return entries

    async def close(self) -> None:
        for helper in self._helpers:
            helper.alive = False
            if helper.transport is not None:
                helper.transport.close()
        for helper in self._helpers:
            if not helper.ready:  # still importing its validators: nothing to finish
                helper.process.terminate()
            await asyncio.to_thread(helper.process.join, 2)  # it exits when its socket closes
            if helper.process.is_alive():
                helper.process.kill()
        self._helpers.clear()


IN_PROCESS = InProcess()


def validators(count: int, content_search: bool = False) -> InProcess:
    return Validators(count, content_search) if count > 0 else InProcess()
