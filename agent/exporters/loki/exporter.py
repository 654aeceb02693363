"""``loki`` exporter: ``POST /loki/api/v1/push`` with the OTLP log records and the span events of kept traces.

Span events are turned into log records when they arrive (only the events are queued, not the spans), so the
queue, the retries and the counters see one signal: ``logs``. Loki answers 204 on success; 400 means it refused
entries of the push for good and stored the others: Loki's reason is logged, and as many records count as
rejected as its answer says it ignored, or the whole push when it does not say (see ``refusal``); 429 and 5xx
are retried, honouring ``Retry-After``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
from google.protobuf.message import Message

from agent import __version__
from agent.component import Consumer, CreateSettings, Signal
from agent.exporters._helper.consumer import SignalConsumer
from agent.exporters._helper.http import attempt_timeout, redirect_refused, request_body, unreachable
from agent.exporters._helper.queue import SendingQueue
from agent.exporters._helper.retention import RetentionClassifier, RetentionFilter
from agent.exporters._helper.retry import (
    OTLP_HTTP_RETRYABLE,
    PermanentExportError,
    RetryableError,
    http_error,
    report_cut_short,
)
from agent.exporters._helper.tls import load_client_tls
from agent.exporters.loki.config import LokiExporterConfig
from agent.exporters.loki.convert import StreamMapper, span_events_to_logs
from agent.exporters.loki.encode import JSON, PROTOBUF, encode_json, encode_protobuf, split_streams
from agent.exporters.loki.refusal import PushRefused, ignored_entries, refusal_message, refused_records
from agent.telemetry.certificates import LoadedCertificate, presented_certificates
from agent.telemetry.logs import RateLimitedLog

# Loki's own clients also retry 500 ("Only retry 429s, 500s and connection-level errors").
LOKI_RETRYABLE = OTLP_HTTP_RETRYABLE | {500}


class LokiExporter:
    def __init__(self, config: LokiExporterConfig, settings: CreateSettings) -> None:
        self._config = config
        self._settings = settings
        self._log = RateLimitedLog(settings.logger)
        self._filter = RetentionFilter(config.retention_classes, settings)
        self._span_event_keys = tuple(config.span_event_attributes)
        self._mapper = StreamMapper(
            config.label_resource_attributes, RetentionClassifier(settings.service), config.max_line_bytes
        )
        # No whole-attempt backstop (``timeout``): a batch may take several pushes, each bounded by ``timeout`` in
        # ``_post``; cancelling the attempt mid-batch would lose what the pushes before had settled.
        self._queue = SendingQueue(
            settings,
            config.sending_queue,
            self._push,
            retry=config.retry_on_failure,
            batch=config.batch,
            settled_of=self._settled_of,
        )
        self._session: aiohttp.ClientSession | None = None
        # Read now, so that bad files refuse the start or the reload before anything stops.
        uses_tls = config.endpoint.startswith("https://")
        self._tls = load_client_tls(config.tls, f"exporters.{settings.component_id}.tls") if uses_tls else None
        # Bodies of batches whose last attempt failed retryably (by batch identity), while a worker still sends
        # them: at most one per worker.
        self._bodies: dict[int, _Pushes] = {}
        self._headers = {
            **config.headers,
            "Content-Type": JSON if config.encoding == "json" else PROTOBUF,
            "User-Agent": f"otel-sidecar/{__version__}",
        }
        if config.tenant_id:
            self._headers["X-Scope-OrgID"] = config.tenant_id
        if config.compression == "gzip":
            self._headers["Content-Encoding"] = "gzip"
        m = settings.metrics
        self._converted = m.counter(
            "loki_span_events_total", "Span events sent to Loki as log lines.", ["exporter"]
        ).labels(settings.component_id)
        self._truncated = m.counter(
            "loki_truncated_total",
            "Loki limits applied: lines truncated (`line`), structured metadata entries dropped (`metadata`), lines "
            "whose time was over 10 minutes ahead given their observed time or now (`timestamp`).",
            ["exporter", "what"],
        )

    def consumer_for(self, signal: Signal) -> Consumer:
        return SignalConsumer(self.accept, signal)

    def accept(self, signal: Signal, batch: Message) -> None:
        part, routed = self._filter.apply(signal, batch)
        if part is not None:
            self._offer(signal, part)
        self._filter.count(signal, routed)

    def _offer(self, signal: Signal, batch: Message) -> None:
        if signal is Signal.LOGS:
            self._queue.offer(signal, batch)
        elif signal is Signal.TRACES and self._config.span_events != "none":
            logs = span_events_to_logs(batch, self._config.span_events, self._span_event_keys)
            if logs is not None:
                self._queue.offer(Signal.LOGS, logs)
                self._converted.inc(sum(len(sl.log_records) for rl in logs.resource_logs for sl in rl.scope_logs))

    async def start(self) -> None:
        ssl_context = self._tls.ssl_context if self._tls is not None else False
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_context, limit=16))
        await self._queue.start()

    def certificates(self) -> list[LoadedCertificate]:
        return presented_certificates(self._tls)

    def held_items(self) -> int:
        return self._queue.held_items()

    async def shutdown(self, deadline: float) -> None:
        await self._queue.shutdown(deadline)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _push(self, signal: Signal, batch: Message) -> int:
        """Send ``batch``; return how many of its records Loki refused for good while it took the others.

        A batch too big for one push goes as several; a retry resumes at the first not taken. Loki's 400 refuses
        entries of one push (too old or too far ahead, out of order, too large) and stores its valid entries: the
        other pushes still go. Only a batch Loki refused whole raises ``PermanentExportError``.
        """
        pushes = self._pushes_of(batch)
        rejected = 0  # in this attempt
        # Each refused push's line, logged when the attempt ends: a batch refused whole raises the last one's,
        # which the queue logs as it drops the batch (logged here too, it was said twice, Loki's body each time).
        refusals: list[tuple[PermanentExportError, str]] = []
        try:
            while pushes.delivered < len(pushes.bodies):
                items = pushes.items[pushes.delivered]
                try:
                    await self._post(pushes.bodies[pushes.delivered])
                except PermanentExportError as exc:
                    refused = refused_records(exc, items)
                    rejected += refused
                    pushes.rejected += refused
                    refusals.append((exc, refusal_message(exc, refused, items)))
                pushes.delivered += 1
                pushes.settled += items
            if refusals and pushes.rejected == pushes.settled:  # nothing of the batch was taken: rejected whole
                last, message = refusals.pop()
                raise PermanentExportError(message, reason=last.reason)
        except RetryableError as exc:
            exc.rejected += rejected
            exc.settled = pushes.settled
            exc.at_risk = items  # the failed push's records: the retry sends them again, the pushes before not
            raise  # the bodies stay for the retry
        except asyncio.CancelledError:
            # The shutdown deadline cut it mid-push: the bodies stay for a retry (a disk queue's, after it). Loki
            # may hold the push under way, not the ones after it.
            report_cut_short(pushes.items[pushes.delivered] if pushes.delivered < len(pushes.items) else 0)
            raise
        except BaseException:
            self._bodies.pop(id(batch), None)
            raise
        finally:
            for _, message in refusals:
                self._log.warning("rejected", message, exporter=self._settings.component_id)
        self._bodies.pop(id(batch), None)
        return rejected

    async def _post(self, body: bytes) -> None:
        assert self._session is not None
        try:
            async with self._session.post(
                self._config.endpoint,
                data=request_body(body),
                headers=self._headers,
                timeout=attempt_timeout(float(self._config.timeout)),
                server_hostname=self._config.tls.server_name_override or None,
                allow_redirects=False,  # see redirect_refused
            ) as response:
                if 200 <= response.status < 300:
                    return
                if 300 <= response.status < 400:
                    raise redirect_refused(
                        response.status, response.headers.get("Location", "?"), self._config.endpoint
                    )
                answer = (await response.text(errors="replace")).strip()
                error = http_error(response.status, answer[:1024], response.headers.get("Retry-After"), LOKI_RETRYABLE)
                if response.status == 400:
                    # Read from the whole answer: Loki's count of ignored entries ends it, past the cut.
                    raise PushRefused(str(error), ignored_entries(answer))
                raise error
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise unreachable(exc, self._config.endpoint, float(self._config.timeout)) from None

    def _settled_of(self, batch: Message) -> tuple[int, int]:
        """Records of ``batch``, in a retry, that the pushes before the failed one settled, and how many of those
        Loki refused for good: the others it has."""
        pushes = self._bodies.get(id(batch))
        return (pushes.settled, pushes.rejected) if pushes is not None and pushes.batch is batch else (0, 0)

    def _pushes_of(self, batch: Message) -> _Pushes:
        """The pushes of ``batch``, built once per batch: a retry sends the very same lines, timestamps included
        (Loki drops an entry it has with the same timestamp and line), and limits are counted once, not per
        attempt."""
        cached = self._bodies.get(id(batch))
        if cached is not None and cached.batch is batch:
            return cached
        streams = self._mapper.streams(batch)
        self._count_limits()
        parts = split_streams(streams)
        if self._config.encoding == "json":
            gzip = self._config.compression == "gzip"
            bodies = [encode_json(part, gzip) for part in parts]
        else:
            bodies = [encode_protobuf(part) for part in parts]
        self._forget_batches_not_in_flight()
        pushes = _Pushes(batch, bodies, [sum(len(entries) for entries in part.values()) for part in parts])
        self._bodies[id(batch)] = pushes
        return pushes

    def _forget_batches_not_in_flight(self) -> None:
        """Drop the pushes of batches the queue gave up on (delivered or refused ones leave at once). Never those of
        a batch still being retried: rebuilt, it would start again at its first push, sending again what Loki has.
        """
        sending = {id(part) for part in self._queue.parts_in_flight()}
        for key in [key for key, pushes in self._bodies.items() if id(pushes.batch) not in sending]:
            del self._bodies[key]

    def _count_limits(self) -> None:
        cid = self._settings.component_id
        if self._mapper.truncated_lines:
            self._truncated.labels(cid, "line").inc(self._mapper.truncated_lines)
            self._mapper.truncated_lines = 0
        if self._mapper.dropped_metadata or self._mapper.truncated_metadata:  # entries dropped or cut
            self._truncated.labels(cid, "metadata").inc(self._mapper.dropped_metadata + self._mapper.truncated_metadata)
            self._mapper.dropped_metadata = self._mapper.truncated_metadata = 0
        if self._mapper.retimed_entries:
            self._truncated.labels(cid, "timestamp").inc(self._mapper.retimed_entries)
            self._mapper.retimed_entries = 0


@dataclass(slots=True)
class _Pushes:
    """The push bodies of one batch and the records in each; how many pushes Loki has answered for good (a retry
    resumes at the next), and the records in those (``settled``) and those of them it refused (``rejected``)."""

    batch: Message
    bodies: list[bytes]
    items: list[int]
    delivered: int = 0
    settled: int = 0
    rejected: int = 0
