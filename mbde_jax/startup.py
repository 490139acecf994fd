"""Where a run's start-up goes: the pieces of the training's "ready in" line and the compilations inside them.

The training loop times its start-up with a StartupClock and logs `describe()` in its ready line, with
`figures()` attached to that log record as `record.startup_seconds`; `mbde-benchmark startup` reads it from
there, so the benchmark and the line measure the same thing.
"""

from __future__ import annotations

import collections
import contextlib
import time
from typing import Callable, Iterator

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


@contextlib.contextmanager
def compilations(on_compile: Callable[[str, float], None], on_cache_hit: Callable[[], None]) -> Iterator[None]:
    """Inside the block: on_compile(program name, seconds) for each XLA compilation (a persistent-cache read
    counts as one) and on_cache_hit() for each program read from the persistent cache."""
    import jax  # pylint: disable=import-outside-toplevel

    def on_duration(event: str, duration: float, **fields) -> None:
        if event == COMPILE_EVENT:
            name = str(fields.get("fun_name", "?"))
            on_compile(name[4:-1] if name.startswith("jit(") else name, duration)

    def on_event(event: str, **_) -> None:
        if event == CACHE_HIT_EVENT:
            on_cache_hit()

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    try:
        yield
    finally:
        jax.monitoring.unregister_event_duration_listener(on_duration)
        jax.monitoring.unregister_event_listener(on_event)


class StartupClock:
    """Times named pieces of a start-up (time.time(), from `started`) and, while `listening()`, the XLA
    compilations (by program name) and persistent-cache reads that happen."""

    def __init__(self, started: float):
        self.started = started
        self.pieces: dict[str, float] = {}
        self.compiled: collections.Counter = collections.Counter()  # program name -> seconds compiling or reading
        self.cache_hits = 0
        self.ended: float | None = None

    @contextlib.contextmanager
    def listening(self) -> Iterator["StartupClock"]:
        def on_compile(name: str, seconds: float) -> None:
            self.compiled[name] += seconds

        def on_cache_hit() -> None:
            self.cache_hits += 1

        try:
            with compilations(on_compile, on_cache_hit):
                yield self
        finally:
            self.ended = time.time()

    @contextlib.contextmanager
    def piece(self, name: str) -> Iterator[None]:
        start = time.time()
        try:
            yield
        finally:
            self.pieces[name] = self.pieces.get(name, 0.0) + time.time() - start

    def rename(self, old: str, new: str) -> None:
        self.pieces[new] = self.pieces.pop(old)

    def figures(self) -> dict:
        """{'total_s', 'pieces_s' (with 'other': the rest), 'compile_s', 'compiled_s' by program, 'cache_hits'}."""
        total = (self.ended or time.time()) - self.started
        pieces = dict(self.pieces, other=max(0.0, total - sum(self.pieces.values())))
        return {"total_s": round(total, 3), "pieces_s": {k: round(v, 3) for k, v in pieces.items()},
                "compile_s": round(sum(self.compiled.values()), 3),
                "compiled_s": {k: round(v, 3) for k, v in sorted(self.compiled.items())},
                "cache_hits": self.cache_hits}

    def describe(self) -> str:
        """'1.7 s (data 0.4 s, ..., other 0.1 s; 0.7 s of it compiling 2 programs)'."""
        figures = self.figures()
        pieces = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in figures["pieces_s"].items())
        programs = len(self.compiled)
        # JAX times a program read from the persistent cache as a compilation too
        verb = "compiling or reading" if self.cache_hits else "compiling"
        compiled = (f"{figures['compile_s']:.1f} s of it {verb} {programs} program{'s' * (programs != 1)}"
                    if programs else "nothing compiled")
        if self.cache_hits:
            compiled += f", {self.cache_hits} of them from the compilation cache"
        return f"{figures['total_s']:.1f} s ({pieces}; {compiled})"
