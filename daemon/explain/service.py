"""The explain service in the capture process: take requests, deliver answers (no TensorFlow here).

``handle_request`` runs on the MQTT network thread and never waits: it validates the
request against the frame cache, answers errors at once, and otherwise hands a ``Job`` to
a dispatcher: the fleet's (``remote``, a ``daemon.fleet.dispatcher.RemoteDispatcher``, with
``explain.mode`` remote, or auto while a worker is present) or this box's explainer process
(``local``, a ``daemon.explain.local.LocalDispatcher``). A dispatcher that cannot take it
answers ``busy`` or ``shutting_down`` at once.

Both dispatchers hand their answers back to ``_deliver``: it publishes each to the
request's MQTT 5 Response Topic with its Correlation Data (else to the default response
topic), publishes the picture as a JPEG (:func:`picture_jpeg`) retained on the explain image
topic with its info (``made_at``) beside it, and writes the explanation files into the
snapshot folder (``daemon.snapshot``).

Where the broker caps the packet size, the publisher makes the picture a smaller JPEG and
an answer too large leaves out its inline heatmaps (``requests.fitted_response``): a
requester always gets an answer.

A request may name a stored ``event`` of the timeline (``history``, a
``daemon.history.service.HistoryService``) instead of a frame: it is explained from the
event's lossless key frame, answered as usual with ``event_id`` added, and the answer is
kept with the event. ``explain_in_background`` hands the local dispatcher a new event to
explain (``history.explain``) at low priority: nobody is answered, the maps are kept with
the event.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Protocol

from daemon.contract import CameraTopics, explanation_info
from daemon.explain.job import Job
from daemon.explain.requests import ErrorResponse, check_words, fitted_response, validate_request
from daemon.imaging import decode_image, encode_jpeg, jpeg_within
from daemon.mqtt import topic_problem

if TYPE_CHECKING:
    from daemon.explain.local import LocalDispatcher

log = logging.getLogger("explaincam.explain")

PICTURE_JPEG_QUALITY = 88  # with colour at full resolution: an 8-word gradcam + saliency grid is ~250 KB


def picture_jpeg(png: bytes) -> tuple[bytes, Callable[[int], bytes | None]]:
    """The explanation picture (a PNG) as the JPEG published on MQTT, and how to make it fit a smaller room.

    A lossless PNG of the grid holds a copy of the frame per word and method: 1.1-1.6 MB for
    eight words; the JPEG is about a sixth of it.
    """
    rgb = decode_image(png)
    return encode_jpeg(rgb, PICTURE_JPEG_QUALITY, full_colour=True), lambda room: jpeg_within(rgb, room)


class Dispatcher(Protocol):
    """What explains the jobs the service accepted: ``LocalDispatcher`` (this box's explainer process)
    or ``RemoteDispatcher`` (a fleet's workers)."""

    def start(self, reply: Callable, deliver: Callable) -> None:
        """Begin; answer errors with ``reply(payload, pending)``, explanations with ``deliver(payload, grid, pending)``."""

    def takes(self) -> bool:
        """Whether the next request goes to this dispatcher."""

    def submit(self, job: Job, reply) -> ErrorResponse | None:
        """Take a job, or answer at once why not (busy, shutting_down)."""

    def stop(self) -> None:
        """Answer what still waits ``shutting_down`` and end."""


@dataclass
class _Pending:
    """Where and how to answer an accepted request."""

    request_id: str
    response_topic: str | None
    correlation_data: bytes | None
    received: float
    image: object = None  # the frame explained (RGB uint8), for the snapshot page
    event_id: int | None = None  # the stored event explained, when the request named one
    background: bool = False  # a new event explained for the timeline (history.explain): nobody to answer


@dataclass
class ExplainService:
    """Takes the capture process's explain requests and delivers their answers; dispatchers explain them."""

    config: object  # the ExplainConfig
    publish: Callable  # the MqttPublisher's publish
    topics: CameraTopics
    frame_cache: object  # the FrameCache the requests name their frames in
    local: LocalDispatcher  # this box's explainer process
    remote: Dispatcher | None = None  # the RemoteDispatcher of a fleet's workers
    snapshot: object = None  # the SnapshotFolder the explanation files go to, or None
    model_name: str | None = None
    history: object = None  # the timeline's HistoryService (requests may name its events), or None
    background_methods: list[str] = field(default_factory=list)  # history.explain; [] = none
    _keys: Iterator[int] = field(default_factory=lambda: itertools.count(1), init=False, repr=False)

    def __post_init__(self):
        """Start the dispatchers: they answer through this service."""
        for dispatcher in (self.local, self.remote):
            if dispatcher is not None:
                dispatcher.start(reply=self._reply, deliver=self._deliver)

    def handle_request(self, payload: bytes, response_topic: str | None = None,
                       correlation_data: bytes | None = None) -> None:
        """Validate one request and hand it to a dispatcher, or answer its error / ``busy`` at once."""
        received = time.monotonic()
        reply = _Pending(None, response_topic, correlation_data, received)
        try:
            outcome = self._accept(payload, reply)
        except Exception as exc:  # never let a request disturb the MQTT thread
            log.exception("explain request failed")
            outcome = ErrorResponse(reply.request_id, "internal", f"{type(exc).__name__}: {exc}")
        if isinstance(outcome, ErrorResponse):
            log.info("explain request %r answered %s: %s", outcome.id, outcome.code, outcome.message)
            self._reply(outcome.payload(), reply)

    def _accept(self, payload: bytes, reply: _Pending) -> ErrorResponse | None:
        """Hand the request's job to a dispatcher; an ErrorResponse when it cannot be."""
        request = validate_request(payload, self.config.max_request_bytes, self.config.default_methods)
        if isinstance(request, ErrorResponse):
            return request
        reply.request_id = request.id
        if request.event is not None:
            frame = self._event_frame(request.event, request.id)
            if isinstance(frame, ErrorResponse):
                return frame
            reply.event_id = request.event
        elif request.frame == "latest":
            frame = self.frame_cache.latest()
            if frame is None:
                return ErrorResponse(request.id, "frame_not_cached", "no frame has been captioned yet")
        else:
            frame = self.frame_cache.get(request.frame)
            if frame is None:
                cached = self.frame_cache.frame_ids()
                held = f"frames {cached[0]}..{cached[-1]} are cached" if cached else "no frame is cached"
                return ErrorResponse(request.id, "frame_not_cached",
                                     f"frame {request.frame} is not (or no longer) cached; {held}")
        caption = frame.caption
        reply.image = frame.image
        indices = check_words(request, caption.words, frame.frame_id, caption.caption)
        if isinstance(indices, ErrorResponse):
            return indices
        job = Job(next(self._keys), request.id, frame.frame_id, frame.image, caption.caption,
                  list(caption.tokens), indices, list(request.methods))
        dispatcher = self.remote if self.remote is not None and self.remote.takes() else self.local
        return dispatcher.submit(job, reply)

    def _event_frame(self, event_id: int, request_id):
        """A stored event's key frame as a cached frame, or the ErrorResponse saying why there is none."""
        if self.history is None:
            return ErrorResponse(request_id, "no_such_event", "history is off on this camera: no event is stored")
        frame = self.history.event_frame(event_id)
        if frame is None:
            return ErrorResponse(request_id, "no_such_event", f"event {event_id} is not (or no longer) stored")
        if frame.image is None:
            return ErrorResponse(request_id, "event_not_explainable",
                                 f"event {event_id} was kept without its lossless frame (history.max_frame_mb_per_day)")
        return frame

    def explain_in_background(self, event) -> None:
        """Hand the local explainer a new event (a daemon.history.events.Event) to explain with
        ``background_methods`` behind every user's request; runs on the caption loop's thread and
        returns at once."""
        if not self.background_methods or event.image is None or self.history is None:
            return
        job = Job(next(self._keys), f"event-{event.event_id}", event.first_frame_id, event.image, event.caption,
                  list(event.tokens), list(range(len(event.words))), list(self.background_methods))
        self.local.submit_background(job, _Pending(job.request_id, None, None, time.monotonic(),
                                                   event_id=event.event_id, background=True))

    def _deliver(self, payload: dict, grid: bytes, reply: _Pending) -> None:
        """Publish a finished explanation, local or a fleet worker's: the image and its info (retained),
        the snapshot files, the answer; an explained stored event keeps the answer (its maps), and a
        background explanation is only kept."""
        if reply.event_id is not None:
            payload["event_id"] = reply.event_id
            if self.history is not None:
                self.history.keep_explanation(reply.event_id, explanation_info(payload, 0)["methods"], payload)
        if reply.background:
            return
        text = json.dumps(payload)
        info = explanation_info(payload, made_at=time.time())
        self.publish(self.topics.explain_image_info, json.dumps(info), qos=1, retain=True)
        picture, fit = picture_jpeg(grid)
        self.publish(self.topics.explain_image, picture, qos=1, retain=True, fit=fit)
        if self.snapshot is not None:
            record = dict(payload, model=self.model_name, made_at=info["made_at"], ts=round(time.time(), 3))
            self.snapshot.write_explanation(grid, record, reply.image)
        self._reply(payload, reply, text)

    def _reply(self, payload: dict, reply: _Pending, text: str | None = None) -> None:
        """Publish a response to the request's Response Topic (with its Correlation Data) or the default.

        An answer whose Response Topic cannot be published to (wildcards, say) is dropped with a log line;
        a background explanation has nobody to answer.
        """
        if reply.background:
            return
        topic = reply.response_topic or self.topics.explain_response
        problem = topic_problem(topic)
        if problem is not None:
            log.warning("answer to explain request %r dropped: its Response Topic %r %s",
                        reply.request_id, topic, problem)
            return
        fit = None
        if payload.get("status") == "ok":
            image_topic = self.topics.explain_image
            fit = lambda room: fitted_response(payload, room, image_topic)  # noqa: E731
        self.publish(topic, text or json.dumps(payload), qos=1, correlation_data=reply.correlation_data, fit=fit)

    def stop(self, timeout: float = 2.0) -> None:
        """Answer every waiting request ``shutting_down`` (the fleet's too) and end the explainer process
        (terminated at once, killed after ``timeout`` s)."""
        if self.remote is not None:
            self.remote.stop()
        self.local.stop(timeout)
