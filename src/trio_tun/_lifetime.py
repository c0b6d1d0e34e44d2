"""Objects used as ``async with obj:`` whose lifetime is a task group.

The engine and the worker pool each own a task group for as long as their
``async with`` block runs.  Entering it by hand (``task_group.__aenter__()``)
leaves every way out, a second Ctrl-C among them, to be handled by hand too;
here the lifetime is an ``@asynccontextmanager`` that uses ``async with`` and
``finally:`` as usual, and ``__aenter__``/``__aexit__`` only hand it to an
``AsyncExitStack``.
"""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import TypeVar

L = TypeVar("L", bound="ScopedLifetime")


class ScopedLifetime:
    """Base of classes whose ``async with`` block is the lifetime :meth:`_lifetime` yields in."""

    _exit_stack: contextlib.AsyncExitStack | None = None
    _entered: bool = False

    def _lifetime(self) -> contextlib.AbstractAsyncContextManager[None]:
        raise NotImplementedError

    async def __aenter__(self: L) -> L:
        if self._entered:
            raise RuntimeError(f"a {type(self).__name__} can be entered only once")
        self._entered = True
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self._lifetime())
            self._exit_stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._exit_stack is not None
        return await self._exit_stack.__aexit__(exc_type, exc, tb)
