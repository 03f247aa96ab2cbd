"""Twins: another daemon publishing as this camera (a config copied to a second box).

Two daemons with one camera name and prefix write the same topics: their captions
interleave, both answer every explain request, and the one that stops marks the camera
offline while the other goes on. Each daemon therefore publishes a *claim* on
``{prefix}/{camera}/claim`` (``contract.claim_message``: a random instance id per run, host,
pid, client id, start time) when it starts and again every ``CLAIM_INTERVAL_S``, and listens
to that topic. A claim of another instance is a twin, said as an error naming its host, once
per twin; a daemon that hears a new twin answers with its own claim at once, so both say so
within a moment of the second one's start, and again while both run. Claims are not
retained: a daemon that was killed leaves no claim behind to be taken for a twin.

Of two twins the one that started first keeps answering explain requests; the other
answers none while the twin's claims keep coming, so one request never gets two answers.
When a twin stops and its last will marks the camera offline, the daemon still running
says ``online`` again.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Callable

from daemon.contract import OFFLINE, ONLINE, CameraTopics, claim_message

log = logging.getLogger(__name__)

CLAIM_INTERVAL_S = 10.0  # a claim is repeated this often...
STALE_AFTER = 3  # ...and one older than this many intervals is from a daemon that is gone


class TwinWatch:
    """Publishes this daemon's claim on its camera and notices another daemon's."""

    def __init__(self, publish: Callable, subscribe: Callable, topics: CameraTopics, client_id: str,
                 interval_s: float = CLAIM_INTERVAL_S, clock: Callable[[], float] = time.time):
        self.publish = publish
        self.topics = topics
        self.client_id = client_id
        self.interval_s = interval_s
        self.clock = clock
        self.host = socket.gethostname()
        self.instance = uuid.uuid4().hex[:12]
        self.started = clock()
        self._twins: dict[str, tuple[dict, float]] = {}  # instance -> (its claim, when it was heard)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._repeat, name="camera-claim", daemon=True)
        subscribe(topics.claim, self._on_claim, qos=1,
                  purpose="a second daemon publishing as this camera goes unnoticed")
        subscribe(topics.availability, self._on_availability, qos=1,
                  purpose="a stopped twin's 'offline' is not corrected")

    def start(self) -> None:
        """Publish the claim now and every ``interval_s``."""
        self._claim()
        self._thread.start()

    def stop(self) -> None:
        """Stop repeating the claim."""
        self._stop.set()

    def answers_requests(self) -> bool:
        """False while a twin that started before this daemon (or at the same time with a smaller
        instance id) is present: that one answers the camera's explain requests."""
        mine = (self.started, self.instance)
        return not any((claim["started"], claim["instance"]) < mine for claim in self.present())

    def present(self) -> list[dict]:
        """The claims of the twins heard within the last STALE_AFTER intervals."""
        now = time.monotonic()
        with self._lock:
            return [claim for claim, heard in self._twins.values() if now - heard <= STALE_AFTER * self.interval_s]

    def _claim(self) -> None:
        message = claim_message(self.instance, self.host, os.getpid(), self.client_id, self.started, self.clock())
        self.publish(self.topics.claim, json.dumps(message), qos=1, message_expiry_s=int(self.interval_s))

    def _repeat(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._claim()

    def _on_claim(self, payload: bytes, properties) -> None:
        """A claim on this camera: a twin's when it is fresh (not held up on its way) and not this run's or
        this daemon's last run's (a quick restart on the same host and client id)."""
        try:
            claim = json.loads(payload)
            instance, ts = str(claim["instance"]), float(claim["ts"])
            claim["started"] = float(claim["started"])
        except (ValueError, KeyError, TypeError):
            return  # not a claim: not ours to judge
        if instance == self.instance or (claim.get("host") == self.host and claim.get("client_id") == self.client_id):
            return
        if self.clock() - ts > STALE_AFTER * self.interval_s:
            return  # said long ago (queued for a session): that daemon may be gone
        with self._lock:
            first = instance not in self._twins
            self._twins[instance] = (claim, time.monotonic())
        if first:
            self._claim()  # the twin hears of this daemon now, not an interval later
            log.error("another daemon publishes as camera %r under %r: host %s (pid %s, client id %s): its captions "
                      "and ours interleave on %s; give each camera its own camera.name (or mqtt.topic_prefix). "
                      "Until then %s", self.topics.camera, self.topics.prefix, claim.get("host"), claim.get("pid"),
                      claim.get("client_id"), self.topics.caption,
                      "this daemon answers its explain requests" if self.answers_requests()
                      else "the other one, started first, answers its explain requests")

    def _on_availability(self, payload: bytes, properties) -> None:
        """A twin that stopped said ``offline`` for the camera while this daemon still runs: say ``online``."""
        if payload.decode(errors="replace") == OFFLINE and self._twins and not self._stop.is_set():
            log.warning("a twin marked camera %r offline while this daemon runs: publishing online again",
                        self.topics.camera)
            self.publish(self.topics.availability, ONLINE, qos=1, retain=True)
