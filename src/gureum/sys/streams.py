"""Long byte streams between the event loop and blocking code, on a thread of their own.

Backup archives are read and written by blocking code (``tarfile``, hashing, file I/O) while
the bytes come from, or go to, an HTTP client at whatever pace it likes. Running that code in
asyncio's shared thread pool let one slow or hostile client hold a pool thread for as long as
it wished (a reader blocked on a pipe nobody writes to): a few of them and every other
request that needs the pool stalled, and the service could not stop. So each stream gets a
dedicated daemon thread, the two sides meet in a small bounded queue, the event loop side
never blocks, and whichever side stops first makes the other stop at once:

- ``consume_in_thread``: a request body (async) read by blocking code. If the code finishes
  or fails before the body ends, the rest of the body is not read and the answer comes now.
- ``produce_in_thread``: bytes written by blocking code, sent as an async stream. If the client
  goes away, the writer's next write raises BrokenPipeError.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, BinaryIO, TypeVar, cast

from gureum.errors import Stalled

T = TypeVar("T")
DEPTH = 8  # chunks queued between the two sides (each up to CHUNK bytes)
CHUNK = 1 << 20


class _Queue:
    """A bounded queue of byte chunks with a blocking end (a thread) and an async end (the
    loop). ``closed`` by either side: the other sees the end at its next call."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._chunks: collections.deque[bytes] = collections.deque()
        self._cond = threading.Condition()
        self._changed = asyncio.Event()
        self.ended = False  # the putting side is done: no more chunks
        self.gone = False  # the taking side is gone: puts fail

    def _wake_loop(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: no one waits there
            self._loop.call_soon_threadsafe(self._changed.set)

    # -- the thread's side -----------------------------------------------------------------------
    def take(self) -> bytes:
        """The next chunk, b"" at the end (blocks)."""
        with self._cond:
            while not self._chunks and not self.ended:
                self._cond.wait()
            chunk = self._chunks.popleft() if self._chunks else b""
        self._wake_loop()
        return chunk

    def put(self, chunk: bytes) -> None:
        """Queue a chunk (blocks while the queue is full); BrokenPipeError if no one takes."""
        with self._cond:
            while len(self._chunks) >= DEPTH and not self.gone:
                self._cond.wait()
            if self.gone:
                raise BrokenPipeError("the stream's reader is gone")
            self._chunks.append(chunk)
        self._wake_loop()

    # -- the loop's side -------------------------------------------------------------------------
    async def aput(self, chunk: bytes) -> bool:
        """Queue a chunk, waiting (without blocking the loop) while full; False if the taker is
        gone."""
        while True:
            with self._cond:
                if self.gone:
                    return False
                if len(self._chunks) < DEPTH:
                    self._chunks.append(chunk)
                    self._cond.notify_all()
                    return True
                self._changed.clear()
            await self._changed.wait()

    async def atake(self) -> bytes:
        """The next chunk, b"" at the end."""
        while True:
            with self._cond:
                if self._chunks:
                    chunk = self._chunks.popleft()
                    self._cond.notify_all()
                    return chunk
                if self.ended:
                    return b""
                self._changed.clear()
            await self._changed.wait()

    # -- either side -----------------------------------------------------------------------------
    def close(self, *, taker: bool) -> None:
        """The taking side is gone (``taker``), or the putting side has no more: the other side
        sees it at its next call, or at once if it is waiting."""
        with self._cond:
            if taker:
                self.gone = True
                self._chunks.clear()
            else:
                self.ended = True
            self._cond.notify_all()
        self._wake_loop()


class _Reader(io.RawIOBase):
    """The blocking code's file to read from."""

    def __init__(self, queue: _Queue) -> None:
        self._queue = queue
        self._rest = b""

    def readable(self) -> bool:
        return True

    # A raw stream's readinto as io.Buffered* call it (typeshed's base takes any buffer).
    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if not self._rest:
            self._rest = self._queue.take()
        n = min(len(buffer), len(self._rest))
        buffer[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


class _Writer(io.RawIOBase):
    """The blocking code's file to write to."""

    def __init__(self, queue: _Queue) -> None:
        self._queue = queue

    def writable(self) -> bool:
        return True

    # A raw stream's write as io.BufferedWriter calls it (typeshed's base takes any buffer).
    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._queue.put(bytes(data))
        return len(data)


def _start(name: str, work: Callable[[], None]) -> None:
    # A daemon: a stream cut off mid-way never keeps the process from exiting.
    threading.Thread(target=work, name=name, daemon=True).start()


async def consume_in_thread(
    body: AsyncIterator[bytes],
    consume: Callable[[io.BufferedReader], T],
    *,
    name: str,
    idle_timeout: float | None = None,
    min_bytes: int = 0,
) -> T:
    """Run ``consume(file)`` on a thread of its own while ``body`` feeds ``file``; its result.

    The body is read only as fast as ``consume`` takes it, and no further once ``consume`` has
    returned or raised: its error is raised here at once. A body that sends nothing for
    ``idle_timeout`` seconds, or less than ``min_bytes`` in any such span, is given up
    (``Stalled``), and ``consume`` sees it end.
    """
    loop = asyncio.get_running_loop()
    queue = _Queue(loop)
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            # No error: result holds what the function returned (Optional only to cross over).
            done.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        result, error = None, None
        try:
            result = consume(io.BufferedReader(_Reader(queue), CHUNK))
        except BaseException as exc:
            error = exc
        finally:
            queue.close(taker=True)
        with contextlib.suppress(RuntimeError):  # the loop is closed: no one waits for it
            loop.call_soon_threadsafe(settle, result, error)

    _start(name, work)
    chunks = aiter(body)
    span_started, span_bytes = loop.time(), 0
    try:
        while True:
            # The client may stop sending (or send slowly) after ``consume`` has already
            # failed: wait for whichever comes first, never for the body alone.
            following: asyncio.Future[bytes] = asyncio.ensure_future(anext(chunks))
            either: list[asyncio.Future[Any]] = [following, done]
            await asyncio.wait(either, timeout=idle_timeout, return_when=asyncio.FIRST_COMPLETED)
            if not following.done():
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await following
                if not done.done():
                    raise Stalled(f"the upload stalled: nothing arrived for {idle_timeout:g} s")
                break
            try:
                chunk = following.result()
            except StopAsyncIteration:
                break
            span_bytes += len(chunk)
            if idle_timeout is not None and loop.time() - span_started >= idle_timeout:
                if span_bytes < min_bytes:
                    raise Stalled(
                        f"the upload is too slow: {span_bytes} bytes in"
                        f" {loop.time() - span_started:.0f} s"
                    )
                span_started, span_bytes = loop.time(), 0
            if not await queue.aput(chunk):
                break
    finally:
        queue.close(taker=False)  # the end of the body (or of our reading it)
    return await done


async def produce_in_thread(
    produce: Callable[[BinaryIO], object], *, name: str
) -> AsyncIterator[bytes]:
    """The bytes ``produce(file)`` writes on a thread of its own, as an async stream. If the
    stream is closed early (the client went away), ``produce``'s writes raise BrokenPipeError.
    An error ``produce`` raises is raised here after the bytes it wrote."""
    loop = asyncio.get_running_loop()
    queue = _Queue(loop)
    failure: list[BaseException] = []

    def work() -> None:
        try:
            # typeshed wants a raw stream class for BufferedWriter; _Writer is one structurally.
            with io.BufferedWriter(_Writer(queue), CHUNK) as out:  # type: ignore[type-var]
                produce(cast(BinaryIO, out))
        except BaseException as exc:
            failure.append(exc)
        finally:
            queue.close(taker=False)

    _start(name, work)
    try:
        while chunk := await queue.atake():
            yield chunk
        if failure:
            raise failure[0]
    finally:
        queue.close(taker=True)
