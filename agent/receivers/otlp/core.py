"""Transport-independent handling of one OTLP export request: validate, hand to the pipeline, answer."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from google.protobuf.message import DecodeError, Message

from agent.component import ConsumerMap, CreateSettings, PermanentError, Refused, Signal, consume_with_size
from agent.otlp import json_codec
from agent.otlp.signals import SPECS
from agent.otlp.utf8_repair import decode_repairing_utf8
from agent.telemetry.logs import RateLimitedLog

# OTLP/JSON is decoded in Python at about 8 MB/s, and a protobuf body with strings to repair (utf8_repair.py) at
# about 17 MB/s: a 16 MiB body would hold the event loop for a second or two, long enough to fail a liveness probe.
# Larger bodies are decoded on the receiver's own thread, one at a time as on the loop (six at once would build six
# bodies' objects, 125 MiB each, before any bound sees them, and would hold up the default executor's other work);
# the loop gets the GIL between the decoder's slices.
SLOW_DECODE_ON_LOOP_BYTES = 256 * 1024
# JSON costs per value too: 256 KiB of empty spans ("{}," each, 87,000 of them) held the loop for over a second,
# and of bare numbers 0.3 s. Counting braces and commas is a C scan of the body; a body with more of them than
# this goes to the thread whatever its size (a real 100 KiB request has about 10,000).
SLOW_DECODE_ON_LOOP_JSON_VALUES = 16384
# Bodies waiting for the decoding thread stay in memory, decompressed, until their turn: past this many bytes
# waiting (and at least one body), a sender is told to retry later rather than adding its body to the wait.
SLOW_DECODE_QUEUE_BYTES = 64 * 1024 * 1024


class Failure(enum.StrEnum):
    """Why a whole request was not accepted; each maps to a gRPC code and an HTTP status."""

    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    REFUSED = "backpressure"
    INCOMPLETE = "incomplete"  # the body did not arrive whole (too slow, or the connection dropped): retryable
    NO_PIPELINE = "no_pipeline"  # a signal no pipeline of this agent takes from this receiver
    INTERNAL = "internal"  # a bug: answered 500 / INTERNAL, logged with its traceback


class Decoded(NamedTuple):
    request: Message
    repaired_strings: int  # strings that were not UTF-8, their bad bytes replaced by U+FFFD
    unknown_keys: tuple[str, ...] = ()  # an OTLP/JSON body's top-level keys that are no field (ignored)


@dataclass
class RequestFailed(Exception):
    failure: Failure
    message: str
    retry_after: float = 0.0


class ExportHandler:
    """Shared by the gRPC and HTTP servers of one ``otlp`` receiver."""

    def __init__(self, settings: CreateSettings, consumers: ConsumerMap, retry_after: float) -> None:
        self._settings = settings
        self._consumers = consumers
        self._retry_after = retry_after
        self._log = RateLimitedLog(settings.logger)
        self._slow_decoder: concurrent.futures.ThreadPoolExecutor | None = None
        self._slow_decode_turn = asyncio.Lock()  # waiters queue here, on the loop, where they can be checked
        self._slow_decode_waiting_bytes = 0
        m = settings.metrics
        labels = ["receiver", "transport", "signal"]
        self._accepted = m.counter("receiver_accepted_items_total", "Items accepted into the pipeline.", labels)
        self._refused = m.counter(
            "receiver_refused_items_total",
            "Items not accepted, by reason (backpressure: sender told to retry; invalid: rejected for good).",
            [*labels, "reason"],
        )
        self._failed_requests = m.counter(
            "receiver_failed_requests_total",
            "Requests rejected whole before their items could be counted (malformed, too large, wrong type).",
            [*labels, "reason"],
        )
        self._repaired = m.counter(
            "receiver_repaired_strings_total",
            "Strings that were not valid UTF-8, accepted with each bad byte sequence replaced by U+FFFD.",
            labels,
        )

    def refuse_unless_accepted(self, signal: Signal, transport: str, peer: str) -> None:
        """A sender exporting a signal that no pipeline takes from this receiver is told so (gRPC UNIMPLEMENTED,
        HTTP 404, neither retried by OTLP senders), counted and logged: a config that forgot a pipeline, or a
        sender pointed at the wrong agent, otherwise shows only in the sender's own log."""
        if signal in self._consumers:
            return
        self.request_failed(signal, transport, Failure.NO_PIPELINE)
        cid = self._settings.component_id
        message = f"this agent has no {signal.value} pipeline with receiver {cid!r} (service.pipelines)"
        self._log.warning(f"no_pipeline:{signal}", message, receiver=cid, transport=transport, peer=peer)
        raise RequestFailed(Failure.NO_PIPELINE, message)

    async def decode(
        self,
        signal: Signal,
        body: bytes,
        *,
        json: bool,
        transport: str,
        still_wanted: Callable[[], bool] = lambda: True,
    ) -> Decoded:
        """The request in ``body``; a large one that needs Python to decode (JSON, strings to repair) is decoded
        off the event loop, once the bodies ahead of it are, and only if ``still_wanted()`` then (its sender has
        not gone). Raises RequestFailed (counted) when it cannot be decoded, or is not decoded."""
        if not self._slow_to_decode(body, json):
            return self._decode_now(signal, body, json=json, transport=transport)
        if not json:
            with contextlib.suppress(DecodeError):  # the common case, in C: no thread hop
                return Decoded(SPECS[signal].request_type.FromString(body), 0)
        self._refuse_if_decode_wait_full(signal, transport, len(body))
        return await self._decode_on_thread(signal, body, json, transport, still_wanted)

    def _refuse_if_decode_wait_full(self, signal: Signal, transport: str, size: int) -> None:
        waiting = self._slow_decode_waiting_bytes
        if waiting and waiting + size > SLOW_DECODE_QUEUE_BYTES:
            self.request_failed(signal, transport, Failure.REFUSED)
            raise RequestFailed(
                Failure.REFUSED,
                f"{waiting} bytes of requests are waiting to be decoded; retry later",
                self._retry_after,
            )

    async def _decode_on_thread(
        self, signal: Signal, body: bytes, json: bool, transport: str, still_wanted: Callable[[], bool]
    ) -> Decoded:
        """Decode ``body`` on the decoding thread once the bodies ahead of it are done, its bytes counted as
        waiting until then (and until the thread is done with it, should its sender leave meanwhile)."""
        self._slow_decode_waiting_bytes += len(body)
        try:
            await self._slow_decode_turn.acquire()
        except asyncio.CancelledError:  # gRPC cancels the call of a sender that gave up (its deadline)
            self._slow_decode_waiting_bytes -= len(body)
            self.request_failed(signal, transport, Failure.INCOMPLETE)
            raise
        decoding: asyncio.Future[Decoded] | None = None
        handed_over = False  # to the decoding's callback: the turn and the bytes are released when it is done
        try:
            if not still_wanted():  # aiohttp runs on for a sender that has gone: asked here
                self.request_failed(signal, transport, Failure.INCOMPLETE)
                raise RequestFailed(Failure.INCOMPLETE, "the sender closed the connection before its turn")
            if self._slow_decoder is None:
                self._slow_decoder = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="otlp-decode")
            decode = functools.partial(self._decode_now, signal, body, json=json, transport=transport)
            decoding = asyncio.wrap_future(self._slow_decoder.submit(decode))
            return await asyncio.shield(decoding)
        except asyncio.CancelledError:
            # The sender gave up (gRPC) while its body was being decoded: the thread decodes on, keeping the turn
            # and the body's bytes until it is done, so that the next body waits and the bound holds.
            if decoding is not None:
                handed_over = True
                decoding.add_done_callback(functools.partial(self._abandoned_decode_done, signal, transport, len(body)))
            raise
        finally:
            if not handed_over:
                self._release_decode_turn(len(body))

    def _release_decode_turn(self, size: int) -> None:
        self._slow_decode_waiting_bytes -= size
        self._slow_decode_turn.release()

    def _abandoned_decode_done(
        self, signal: Signal, transport: str, size: int, decoding: asyncio.Future[Decoded]
    ) -> None:
        """A body whose sender left while it was decoded: counted incomplete once decoded (a body that failed to
        decode was counted as it failed), and the next body's turn begins."""
        self._release_decode_turn(size)
        if not decoding.cancelled() and decoding.exception() is None:
            self.request_failed(signal, transport, Failure.INCOMPLETE)

    @staticmethod
    def _slow_to_decode(body: bytes, json: bool) -> bool:
        if len(body) > SLOW_DECODE_ON_LOOP_BYTES:
            return True
        return json and body.count(b"{") + body.count(b",") > SLOW_DECODE_ON_LOOP_JSON_VALUES

    def close(self) -> None:
        if self._slow_decoder is not None:
            self._slow_decoder.shutdown(wait=False, cancel_futures=True)
            self._slow_decoder = None

    def _decode_now(self, signal: Signal, body: bytes, *, json: bool, transport: str) -> Decoded:
        spec = SPECS[signal]
        try:
            if json:
                unknown: list[str] = []
                request, repaired_strings = json_codec.decode_repairing(body, spec.request_type, unknown)
                return Decoded(request, repaired_strings, tuple(unknown))
            return Decoded(spec.request_type.FromString(body), 0)
        except (DecodeError, json_codec.OtlpJsonError) as exc:
            repaired = None if json else decode_repairing_utf8(spec.request_type, body)
            if repaired is None:
                self.request_failed(signal, transport, Failure.MALFORMED)
                raise RequestFailed(Failure.MALFORMED, f"cannot decode {spec.request_type.__name__}: {exc}") from None
        return Decoded(*repaired)

    def refuse_if_short_of_memory(self, signal: Signal, transport: str) -> None:
        """Refuse a request before it is read or decoded while the memory limiter refuses: decoding a request
        only to refuse it doubles what it holds, when memory is short. Counted as a failed request with reason
        ``backpressure``; its items are not known without decoding."""
        check = getattr(self._consumers.get(signal), "memory_refusal", None)
        refusal = check() if check is not None else None
        if refusal is not None:
            self.request_failed(signal, transport, Failure.REFUSED)
            raise RequestFailed(Failure.REFUSED, f"{refusal.reason}; retry later", self._retry_after)

    def export(self, signal: Signal, decoded: Decoded, transport: str, size: int, *, peer: str = "") -> Message:
        """Validate ids, hand the valid items to the pipeline, return the OTLP response (maybe partial success).

        ``size`` is the request's size as received (after decompression), which bounds the ingest queue by bytes.
        ``peer``: the sender's address, named in the warnings about its data (which of many senders to fix).
        """
        spec = SPECS[signal]
        cid = self._settings.component_id
        request = decoded.request
        items = spec.count_items(request)
        dense = spec.too_dense(items, size)
        if dense is not None:
            self._refused.labels(cid, transport, signal.value, "invalid").inc(items)
            self._log.warning(f"dense:{signal}", dense, receiver=cid, transport=transport, peer=peer)
            raise RequestFailed(Failure.MALFORMED, dense)
        rejected = spec.reject_invalid(request)
        items -= rejected
        if decoded.repaired_strings:
            # Each bad byte became a three-byte U+FFFD: the stages bound their memory by this size, which the wire
            # size would understate up to threefold (a hostile sender's 16 MiB of 0xFF holds 48 MiB).
            size = max(size, request.ByteSize())
        if items:
            consumer = self._consumers[signal]  # the servers asked refuse_unless_accepted before reading the body
            try:
                consume_with_size(consumer, request, size)
            except Refused as exc:
                self._refused.labels(cid, transport, signal.value, "backpressure").inc(items)
                raise RequestFailed(Failure.REFUSED, f"{exc.reason}; retry later", self._retry_after) from None
            except PermanentError as exc:
                self._refused.labels(cid, transport, signal.value, "invalid").inc(items)
                raise RequestFailed(Failure.MALFORMED, str(exc)) from None
            self._accepted.labels(cid, transport, signal.value).inc(items)
        # Counted once the rest is taken: a refused request comes back with its invalid items in the retry.
        warnings = []
        if rejected:
            self._refused.labels(cid, transport, signal.value, "invalid").inc(rejected)
            warnings.append(f"{rejected} {spec.item_name} rejected: {spec.invalid_reason}")
            self._log.warning(f"invalid:{signal}", warnings[-1], receiver=cid, transport=transport, peer=peer)
        if decoded.repaired_strings:
            # Told in a partial success with nothing rejected: the spec's way of warning a sender.
            self._repaired.labels(cid, transport, signal.value).inc(decoded.repaired_strings)
            warnings.append(
                f"{decoded.repaired_strings} strings were not valid UTF-8; their bad bytes were replaced by U+FFFD"
            )
            self._log.warning(f"utf8:{signal}", warnings[-1], receiver=cid, transport=transport, peer=peer)
        if not items and not rejected and decoded.unknown_keys:
            # OTLP/JSON ignores unknown fields, so a body sent to another signal's path ({"resourceLogs": …} to
            # /v1/traces) or with a misspelt key is a success holding nothing: say so to the sender.
            field = request.DESCRIPTOR.fields[0].json_name
            keys = ", ".join(repr(key) for key in decoded.unknown_keys[:5])
            warnings.append(f"the request holds no {field}, only unknown keys ({keys}): nothing was accepted")
            self._log.warning(f"unknown_keys:{signal}", warnings[-1], receiver=cid, transport=transport, peer=peer)
        return spec.response(rejected, "; ".join(warnings))

    def request_failed(self, signal: Signal, transport: str, failure: Failure) -> None:
        self._failed_requests.labels(self._settings.component_id, transport, signal.value, failure.value).inc()

    def unparsable_http_request(self) -> None:
        """An HTTP request aiohttp could not parse and answered 400 itself: which signal it was for is unknown."""
        self._failed_requests.labels(self._settings.component_id, "http", "unknown", "malformed_http").inc()
