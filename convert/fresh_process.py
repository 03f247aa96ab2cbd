"""Steps of a conversion that run in a fresh Python process of their own.

TensorFlow keeps what a process loaded until the process ends: deleting a loaded
EfficientNetV2L captioner (118 M parameters) gave back 0.04 of the 0.65 GB its loading
took, and a converter's MLIR import, passes and flatbuffer leave gigabytes behind. A large
model's conversion therefore runs its heavy steps (each explainer signature's SavedModel
and its conversion, the int8 encoder's float conversion and its calibration) each in a
fresh process, which takes only that step's memory and gives all of it back when it ends.

A step is a module run as ``python -m MODULE STEP ARGS...`` whose ``__main__`` calls
``step_main``; what it prints on stdout is its answer, and a failure is one ``error:`` line
on stderr that ``run_step`` raises as StepError.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable


class StepError(RuntimeError):
    """A step failed; the message says why in one line."""


@dataclass(frozen=True)
class StepResult:
    """What a finished step printed, and its process's peak resident size."""

    output: str
    peak_rss_bytes: int


def run_step(module: str, argv: list[str], what: str, stdin: Iterable[bytes] = ()) -> StepResult:
    """Run ``python -m module *argv`` from this checkout in a fresh process and wait for it.

    ``stdin`` is written to the process as it reads it (a step that fails early stops the
    writing). ``what`` names the step in errors. Raises StepError with the step's own
    ``error:`` line, or the signal that killed it; an interrupt here kills the step too.
    """
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    started = time.perf_counter()
    with tempfile.TemporaryFile() as output, tempfile.TemporaryFile() as errors:
        child = subprocess.Popen([sys.executable, "-m", module, *argv], stdin=subprocess.PIPE, stdout=output,
                                 stderr=errors, env=env)
        try:
            try:
                for chunk in stdin:
                    child.stdin.write(chunk)
                child.stdin.close()
            except BrokenPipeError:  # the step ended before reading everything: its own error says why
                pass
            _, status, usage = os.wait4(child.pid, 0)
        except BaseException:  # interrupted, or the input failed: the step goes with its caller
            child.kill()
            child.wait()
            raise
        child.returncode = os.waitstatus_to_exitcode(status)
        peak = usage.ru_maxrss * 1024
        output.seek(0)
        errors.seek(0)
        printed = output.read().decode(errors="replace")
        lines = [line for line in errors.read().decode(errors="replace").splitlines() if line.strip()]
    if child.returncode == 0:
        return StepResult(printed, peak)
    if child.returncode < 0:
        why = (f"{what} was killed ({signal.Signals(-child.returncode).name}) after "
               f"{time.perf_counter() - started:.0f} s at {peak / 2 ** 30:.1f} GB peak RSS")
        raise StepError(why + (", most likely by the kernel for lack of memory"
                               if child.returncode == -signal.SIGKILL else ""))
    named = [line[len("error: "):] for line in lines if line.startswith("error: ")]
    raise StepError(named[-1] if named else (lines[-1] if lines else f"{what} failed: exit status {child.returncode}"))


def step_main(step: Callable[[list[str]], str | None]) -> None:
    """The ``__main__`` of a step module: run ``step(sys.argv[1:])``, print its answer, or one error line and exit 1."""
    try:
        answer = step(sys.argv[1:])
    except Exception as exc:  # one line for run_step
        print(f"error: {' '.join(str(exc).split()) or type(exc).__name__}", file=sys.stderr)
        sys.exit(1)
    if answer is not None:
        print(answer)
