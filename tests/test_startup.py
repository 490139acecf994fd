"""The start-up clock behind the training's "ready in" line (mbde_jax.startup)."""

import time

import jax

from mbde_jax import startup


def test_the_clock_names_each_piece_the_rest_and_what_was_compiled():
    clock = startup.StartupClock(time.time())
    with clock.listening():
        with clock.piece("data"):
            time.sleep(0.05)
        with clock.piece("model"):
            jax.monitoring.record_event_duration_secs(startup.COMPILE_EVENT, 0.25, fun_name="jit(initial_draws)")
            jax.monitoring.record_event_duration_secs(startup.COMPILE_EVENT, 0.5, fun_name="jit(create_train_state)")
            jax.monitoring.record_event(startup.CACHE_HIT_EVENT)
        clock.rename("model", "model initialisation")
    jax.monitoring.record_event_duration_secs(startup.COMPILE_EVENT, 9.0, fun_name="jit(late)")  # not listened to
    figures = clock.figures()
    assert list(figures["pieces_s"]) == ["data", "model initialisation", "other"]
    assert figures["pieces_s"]["data"] >= 0.05
    assert abs(sum(figures["pieces_s"].values()) - figures["total_s"]) < 0.01
    assert figures["compiled_s"] == {"create_train_state": 0.5, "initial_draws": 0.25}
    assert figures["compile_s"] == 0.75 and figures["cache_hits"] == 1
    described = clock.describe()
    pieces = figures["pieces_s"]
    assert described.startswith(f"{figures['total_s']:.1f} s (data {pieces['data']:.1f} s, model initialisation "
                                f"{pieces['model initialisation']:.1f} s, other {pieces['other']:.1f} s; ")
    assert described.endswith("; 0.8 s of it compiling or reading 2 programs, 1 of them from the compilation cache)")
