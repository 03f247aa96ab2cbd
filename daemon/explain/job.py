"""One accepted explain request as an explainer takes it, and its answer by the one pipeline.

The explain service makes a ``Job`` of each request it accepts; the local explainer process
(``daemon.explain.process``) and a fleet worker (``daemon.fleet.worker``) answer it with
``answer_job``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from daemon.explain.explainer import answer


@dataclass
class Job:
    """One accepted request: the frame as published and what to explain in it."""

    key: int
    request_id: str
    frame_id: int
    image: np.ndarray  # RGB uint8 at the model's input size
    caption: str
    tokens: list[int]  # published caption's word tokens (no start/end)
    indices: list[int]
    methods: list[str]


def answer_job(explainer, job: Job) -> tuple[dict, bytes]:
    """The ok response (without service timings) and the explanation picture (PNG) of one job."""
    return answer(explainer, job.image, job.tokens, job.indices, job.methods, job.request_id,
                  frame_id=job.frame_id, caption=job.caption)
