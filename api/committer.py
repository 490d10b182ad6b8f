"""The committing process: where a server process's group commit runs its batches.

One Python process serving HTTP on its event loop and committing batches on
a thread has both take turns on one GIL: measured on 2 cores, a redemption
batch took 4.7 ms of the committing thread's wall time for 2.8 ms of its CPU.
So by default (``PARTVAULT_GROUP_COMMIT=process``) each server process starts
one committing process of its own: the event loop pickles each batch to it
over a pipe and reads the outcomes when the pipe turns readable, and serves
HTTP meanwhile (paired runs of bench/redeem.py: issuance 1.6 and redemption
1.36 times faster than with the thread).

The committing process builds its own services from the same settings and
runs `api.groupcommit.commit` on each batch, one at a time: the same code, the
same transactions, the same database as in the server process. It ignores
SIGINT and SIGTERM (a signal to the process group must not cut a batch short)
and ends when its pipe closes: when the server process stops it, or dies.
A batch whose committing process dies before answering may or may not have
committed; each of its requests is answered 503 (``commit-outcome-unknown``),
as when a connection drops after the commit, and the next batch starts a new
process.
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import logging
import multiprocessing
import os
import pickle
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from api.config import Settings
from api.logs import configure_logging
from inventory.errors import PartvaultError, Unavailable

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from api.groupcommit import Outcome, Queued, Request
    from licensing.orders.idempotency import Replay

logger = logging.getLogger("partvault.committer")
#: How long a new committing process may take to import and open its services.
START_SECONDS = 60.0


class CommittingProcess:
    """The committing process of one server process, driven from its event loop.

    Requests wait in `waiting`; whenever the process has no batch in hand, the
    loop sends it everything waiting (up to `max_batch`) and reads its answer
    when the pipe turns readable: no thread in the server process, so no
    hand-over of the GIL between a batch and the next. Requests that come in one
    turn of the loop start a batch together.
    """

    def __init__(self, settings: Settings, max_batch: int) -> None:
        self._settings = settings
        self._max_batch = max_batch
        self._waiting: list[Queued] = []
        self._in_hand: list[Queued] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process: BaseProcess | None = None
        self._pipe: Connection | None = None
        self._sending = False  # a `_send` is scheduled
        self._starting = False  # a new process is being started, off the loop

    def start(self) -> None:
        """Start the process now, blocking (the app's startup: no request waits yet)."""
        if self._pipe is None:
            self._process, self._pipe = _spawn(self._settings)

    async def run(self, request: Request) -> bytes | Replay:
        """`request`'s outcome, once its batch is committed in the committing process."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._bind(loop)
        answer: asyncio.Future[bytes | Replay] = loop.create_future()
        self._waiting.append((request, answer))
        if not self._sending:
            self._sending = True
            loop.call_soon(self._send)
        return await answer

    def stop(self) -> None:
        """Close the pipe (the process ends once its batch, if any, is done) and wait."""
        self._close(wait=True)
        self._loop = None

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the pipe on `loop` (the first, or a new one: tests run several)."""
        self._ignore_pipe()
        self._loop = loop
        if self._pipe is not None:
            _read_on(loop, self._pipe, self._receive)

    def _ignore_pipe(self) -> None:
        if self._loop is not None and self._pipe is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._pipe.fileno())

    def _send(self) -> None:
        """Send the waiting requests, unless a batch is in hand (its answer sends them)."""
        self._sending = False
        if self._in_hand or not self._waiting or self._starting:
            return
        if self._pipe is None:
            self._restart()
            return
        batch = self._waiting[: self._max_batch]
        del self._waiting[: self._max_batch]
        self._in_hand = batch
        try:
            self._pipe.send([request for request, _ in batch])
        except (OSError, EOFError):  # it died while idle: the batch never left
            self._waiting[:0] = batch
            self._in_hand = []
            self._lost()
        except Exception as exc:  # a request that does not pickle (a bug) fails alone
            self._in_hand = []
            self._waiting[:0] = _failing_unpicklable(batch, exc)
            self._send()

    def _receive(self) -> None:
        assert self._pipe is not None
        batch, self._in_hand = self._in_hand, []
        try:
            outcomes: list[Outcome] = self._pipe.recv()
        except (OSError, EOFError):
            if batch:
                logger.error(
                    "the committing process stopped during a batch of %d (exit code %s)",
                    len(batch),
                    _exit_code(self._process),
                )
            settle_all(batch, [_unknown() for _ in batch])
            self._lost()
            return
        settle_all(batch, outcomes)
        self._send()

    def _lost(self) -> None:
        """The process died: forget it, and start another if requests wait."""
        self._close(wait=False)
        self._send()

    def _close(self, *, wait: bool) -> None:
        self._ignore_pipe()
        pipe, process = self._pipe, self._process
        self._pipe = self._process = None
        if pipe is not None:
            pipe.close()
        if process is not None and wait:
            _end(process)

    def _restart(self) -> None:
        """Start a new process in a thread (it takes a second or two), then send."""
        assert self._loop is not None
        self._starting = True
        started = self._loop.run_in_executor(None, _spawn, self._settings)
        started.add_done_callback(self._started)

    def _started(self, started: asyncio.Future[tuple[BaseProcess, Connection]]) -> None:
        self._starting = False
        failure = started.exception()
        if failure is not None:
            waiting, self._waiting = self._waiting, []
            settle_all(waiting, [failure] * len(waiting))
            return
        self._process, self._pipe = started.result()
        if self._loop is not None:
            _read_on(self._loop, self._pipe, self._receive)
        self._send()


def _failing_unpicklable(batch: list[Queued], failure: Exception) -> list[Queued]:
    """The requests of `batch` that pickle; each of the others fails with its error
    (all of them with `failure`, if each pickles alone)."""
    picklable = []
    for queued in batch:
        try:
            pickle.dumps(queued[0])
        except Exception as exc:
            settle_all([queued], [exc])
        else:
            picklable.append(queued)
    if len(picklable) == len(batch):
        settle_all(batch, [failure] * len(batch))
        return []
    return picklable


def _read_on(
    loop: asyncio.AbstractEventLoop, pipe: Connection, receive: Callable[[], None]
) -> None:
    """Call `receive` on `loop` when `pipe` turns readable. The pipe stays blocking
    (uvloop makes a watched descriptor non-blocking): a message arrives in more
    than one piece when it is longer than 16 KiB, and `Connection.recv` must
    wait for the rest instead of failing. The committing process writes it all
    at once, so the wait is short."""
    loop.add_reader(pipe.fileno(), receive)
    os.set_blocking(pipe.fileno(), True)


def _spawn(settings: Settings) -> tuple[BaseProcess, Connection]:
    """A new committing process, once it is ready, and the server's end of its pipe."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(
        target=serve_batches, args=(settings, theirs), name="partvault-committer", daemon=True
    )
    process.start()
    theirs.close()
    if not ours.poll(START_SECONDS) or ours.recv() != "ready":
        ours.close()
        process.kill()
        process.join()
        raise Unavailable("the committing process did not start", code="committer-not-started")
    return process, ours


def _exit_code(process: BaseProcess | None) -> int | None:
    """The exit code of a process whose pipe closed (negative: the signal that ended it)."""
    if process is None:
        return None
    process.join(0.1)  # on the event loop: a process that died has exited by now
    return process.exitcode


def _end(process: BaseProcess) -> None:
    process.join(START_SECONDS)
    if process.is_alive():
        process.kill()
        process.join()


def settle_all(batch: list[Queued], outcomes: list[Outcome]) -> None:
    """Answer each waiting request of `batch` with its outcome (on the event loop),
    whether it was committed in a committing process or on a committing thread."""
    for (_, answer), outcome in zip(batch, outcomes, strict=True):
        if answer.done():  # its client went away meanwhile
            continue
        if isinstance(outcome, BaseException):
            answer.set_exception(outcome)
        else:
            answer.set_result(outcome)


def _unknown() -> Unavailable:
    return Unavailable(
        "the transaction's outcome is unknown: the committing process stopped; "
        "retry with the same Idempotency-Key",
        code="commit-outcome-unknown",
    )


def serve_batches(settings: Settings, pipe: Connection) -> None:
    """The committing process: commit each batch the pipe brings, answer its outcomes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    faulthandler.enable()
    configure_logging(settings.log_level)
    from api.groupcommit import commit
    from api.services import Services

    services = Services.from_settings(settings)
    gc.collect()
    gc.freeze()
    pipe.send("ready")
    try:
        while True:
            try:
                batch = pipe.recv()
            except EOFError:
                return
            pipe.send([_portable(outcome) for outcome in commit(services, batch)])
    except (BrokenPipeError, ConnectionResetError):
        return
    finally:
        services.close()


def _portable(outcome: Any) -> Any:
    """`outcome` as the pipe can carry it. A fault (not a `PartvaultError`) is logged
    here, with the traceback that pickling drops. An error that cannot be
    pickled is sent as a fault of its type and text (a 500)."""
    if not isinstance(outcome, BaseException):
        return outcome
    if not isinstance(outcome, PartvaultError):
        logger.error("a grouped request failed", exc_info=outcome)
    try:
        pickle.dumps(outcome)
    except Exception:
        return RuntimeError(f"{type(outcome).__name__}: {outcome}")
    return outcome
