"""A pretraining run (solo_ema.pretrain's main) that waits to be killed at a chosen point:

    python fault_run.py READY step N ARGS...   inside optimizer step N (0-based): the optimizer has stepped,
                                               the EMA update has not run
    python fault_run.py READY save N ARGS...   inside the N-th checkpoint file write (1-based): half of the
                                               file is on disk, in the temporary file of AtomicCheckpointIO

On getting there it writes the file READY and sleeps until killed. Deterministic algorithms on one thread, as
the in-process runs it is compared with. The faults are injected from here (torch.save and PartialEMA.step are
wrapped in this process only); the library has no test hooks.
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import torch

from solo_ema.ema.momentum import PartialEMA
from solo_ema.pretrain import main


def _wait_for_kill(ready: Path) -> None:
    ready.write_text(str(os.getpid()))
    while True:
        time.sleep(1)


def stop_in_step(ready: Path, step: int) -> None:
    """Wait inside optimizer step `step`, between the optimizer's update and the EMA update."""
    real_step = PartialEMA.step

    def step_then_maybe_wait(self: PartialEMA, max_steps: int) -> float:
        if int(self.num_updates) == step:
            _wait_for_kill(ready)
        return real_step(self, max_steps)

    PartialEMA.step = step_then_maybe_wait


def stop_in_save(ready: Path, call: int) -> None:
    """Wait inside the `call`-th torch.save, with half of the file written and flushed to disk."""
    real_save = torch.save
    calls = {"n": 0}

    def half_save(obj, f, *args, **kwargs) -> None:
        calls["n"] += 1
        if calls["n"] != call:
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        _wait_for_kill(ready)

    torch.save = half_save


if __name__ == "__main__":
    ready_file, mode, at, *argv = sys.argv[1:]
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    {"step": stop_in_step, "save": stop_in_save}[mode](Path(ready_file), int(at))
    sys.exit(main(argv))
