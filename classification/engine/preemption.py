"""Stopping a run cleanly: the signals clusters send ahead of a kill are recorded, every rank agrees at a step
boundary, the state is saved, and the run ends with 128 + the signal (SLURM requeues it, and it resumes there)."""
import signal

import torch
import torch.distributed as dist


class Preempted(Exception):
    """A stop signal arrived; the state was saved at a step boundary and the run ends."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Within the context, SIGTERM and SIGUSR1 (what clusters such as SLURM send ahead of a kill) only record
    their arrival: the trainer stops at the next step boundary, after saving where it was.

    Once one has stopped the run, later ones are ignored until the process exits with 128 + the first signal: the
    state is saved and the run is ending (srun, for one, sends SIGTERM to the other tasks as soon as one task has
    exited, which would otherwise turn their exit status into 143).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.received, self._previous = 0, {}

    def _record(self, signum, frame) -> None:
        self.received = signum

    def __enter__(self) -> 'StopSignals':
        self._previous = {s: signal.signal(s, self._record) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, signal.SIG_IGN if self.received else handler)


def stop_agreed(signals: StopSignals, device: torch.device) -> int:
    """The stop signal any rank received (0 for none), the same on every rank."""
    received = torch.tensor([signals.received], dtype=torch.int64, device=device)
    if dist.is_initialized():
        dist.all_reduce(received, op=dist.ReduceOp.MAX)
    return int(received.item())
