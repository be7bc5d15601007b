"""How the epoch is cut into traced calls (--steps_per_loop), and the profiler window (--profile_steps).

A call of the train loop runs N steps on the device and is read once. `auto` starts at 1 step (the call that
traces), then times the next two calls and settles on the N that makes a call last about TARGET_SECONDS (at most
MAX_STEPS): responsive progress, SIGTERM and checkpoints, and almost no host overhead per step. The timing is averaged
over all workers (a collective), so every worker settles on the same N; loop boundaries then fall on the same steps
everywhere, which preemption needs. Calls also end at every --checkpoint_steps multiple, at the epoch's end and at
the profiler window's edges.
"""

from __future__ import annotations

from typing import Optional, Tuple

TARGET_SECONDS = 1.0
MAX_STEPS = 1000
_MEASURED_CALLS = 2  # calls timed after the first (tracing) one


def parse_profile_steps(text: str) -> Optional[Tuple[int, int]]:
    """'START,END' -> (START, END), 1-based global steps; '' -> None. ValueError when malformed."""
    if not text:
        return None
    start, end = (int(part) for part in text.split(","))
    if not 1 <= start <= end:
        raise ValueError(text)
    return start, end


class LoopPlan:
    """The length of each traced call: fixed (--steps_per_loop=N) or auto."""

    def __init__(self, setting: str, votes, checkpoint_steps: int = 0, profile: Optional[Tuple[int, int]] = None):
        self.auto = setting == "auto"
        self.steps = 1 if self.auto else int(setting)
        self.votes, self.checkpoint_steps, self.profile = votes, checkpoint_steps, profile
        self._calls = 0

    def length(self, step: int, steps: int, global_step: int) -> int:
        """Steps for the call starting after `step` steps of the epoch (`global_step` of the run)."""
        n = min(self.steps, steps - step)
        if self.checkpoint_steps:
            n = min(n, self.checkpoint_steps - step % self.checkpoint_steps)
        for edge in self.profile or ():  # a call ends right before the window opens and where it closes
            for boundary in (edge - 1, edge):
                if global_step < boundary:
                    n = min(n, boundary - global_step)
        return max(n, 1)

    def observe(self, num_steps: int, seconds: float) -> None:
        """After each call (on every worker, at the same time): auto settles N from the first timed calls."""
        self._calls += 1
        if not self.auto or self._calls == 1 or self._calls > 1 + _MEASURED_CALLS:
            return
        per_step = self.votes.mean(seconds / max(num_steps, 1))
        self.steps = int(min(MAX_STEPS, max(1, round(TARGET_SECONDS / max(per_step, 1e-6)))))


class Profiler:
    """A TF profiler trace of global steps START..END under the TensorBoard log folder (chief only)."""

    def __init__(self, window: Optional[Tuple[int, int]], logdir: str, enabled: bool):
        self.window, self.logdir, self.enabled, self.running = window, logdir, enabled and window is not None, False

    def before(self, global_step: int) -> None:
        """Called before each call; `global_step` steps are done."""
        import tensorflow as tf

        if not self.enabled:
            return
        start, end = self.window
        if not self.running and start - 1 <= global_step < end:
            tf.profiler.experimental.start(self.logdir)
            self.running = True
        elif self.running and global_step >= end:
            self.stop()

    def stop(self) -> None:
        import tensorflow as tf

        if self.running:
            tf.profiler.experimental.stop()
            self.running = False


def plan_and_profiler(config, votes, logdir: str, is_chief: bool) -> Tuple[LoopPlan, Profiler]:
    """The LoopPlan and Profiler of a run's TrainConfig."""
    window = parse_profile_steps(config.profile_steps)
    return LoopPlan(config.steps_per_loop, votes, config.checkpoint_steps, window), Profiler(window, logdir, is_chief)
