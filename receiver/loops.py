"""A background loop's lifetime: a task from start until the context ends, then stopped; and
a command's lifetime, until a signal ends it."""

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol, TypeVar


class Loop(Protocol):
    """A background loop: run() until stop() is called, then finish what it is doing."""

    async def run(self) -> None: ...

    def stop(self) -> None: ...


_L = TypeVar("_L", bound=Loop)


@asynccontextmanager
async def looping(loop: _L, name: str) -> AsyncIterator[_L]:
    task = asyncio.create_task(loop.run(), name=name)
    try:
        yield loop
    finally:
        loop.stop()
        await task


async def until_signalled() -> None:
    """Wait for SIGTERM or SIGINT: a command's life once its loops are running."""
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    await stopped.wait()
