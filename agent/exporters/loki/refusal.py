"""How much of a push Loki refused, read from its 400 answer.

Loki answers 400 to a push some of whose entries it refused, and stores the others. Only one of its answers says
how many it refused: its ingester's, for entries out of order or too far behind the stream's newest
(grafana/loki ``pkg/ingester/stream.go``, ``errorForFailedEntries``). That answer lists up to
``max_returned_stream_errors`` (default 10) refused entries, then ends with a summary line::

    user '<tenant>', total ignored: <n> out of <m> for stream: <labels>     (Loki 3)
    total ignored: <n> out of <m>                                           (older Loki)

The distributor's own refusals (an entry too old or too new, a line too long, bad labels) carry no total: its
answer joins the error texts, one per entry or one for a whole stream, and an older Loki sends only the last
one. Such an answer does not say how many entries it stands for, so the whole push counts as refused.

The count is of one stream: Loki's ingester answers for the last stream of the push it handled (each stream's
outcome replaces the one before), and an ingester's refusal replaces the distributor's in the answer. What Loki
did with the push's other records, those of other streams or dropped by its distributor before, the answer does
not say: they count as refused too, since they may have been. So the count is exact for a push of one stream
(``out of`` is the push's record count), an upper bound for others, and never below what was lost. A push of
several streams can even lose entries behind a 204, which nothing can count.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from agent.exporters._helper.retry import PermanentExportError

# The summary line, the last of the answer. The tenant part is matched lazily: a tenant ID may hold a quote,
# not ", total ignored: ".
_SUMMARY = re.compile(r"(?:user '.*?', )?total ignored: (\d+) out of (\d+)(?: for stream: .*)?")


class IgnoredCount(NamedTuple):
    """Loki's summary line: ``ignored`` entries of the ``handled`` its ingester got for the stream it names."""

    ignored: int
    handled: int


class PushRefused(PermanentExportError):
    """Loki's 400 to one push, with its count of ignored entries, or None when the answer has none."""

    def __init__(self, message: str, count: IgnoredCount | None) -> None:
        super().__init__(message)
        self.count = count


def ignored_entries(answer: str) -> IgnoredCount | None:
    """The count of ignored entries Loki's 400 ``answer`` (the whole body) ends with; None when it has no summary
    line, or one that contradicts itself (none ignored, or more than it says the stream held)."""
    last_line = answer.strip().rsplit("\n", 1)[-1]
    match = _SUMMARY.fullmatch(last_line)
    if match is None:
        return None
    count = IgnoredCount(int(match[1]), int(match[2]))
    if not 0 < count.ignored <= count.handled:
        return None
    return count


def refused_records(error: PermanentExportError, records: int) -> int:
    """How many of the ``records`` of a push refused with ``error`` count as rejected: those Loki says it ignored,
    plus those its answer says nothing of (the push held more than the stream it names), never more than the push
    held; all of them when it gives no count (a redirect, an answer without Loki's count)."""
    count = error.count if isinstance(error, PushRefused) else None
    if count is None:
        return records
    return min(records, count.ignored + _unaccounted(count, records))


def _unaccounted(count: IgnoredCount, records: int) -> int:
    return max(0, records - count.handled)


def refusal_message(error: PermanentExportError, refused: int, records: int) -> str:
    """The log line for a refused push: how many records count as refused, why, and Loki's reason."""
    count = error.count if isinstance(error, PushRefused) else None
    if count is None:
        return (
            f"Loki refused a push of {records} log records and its answer does not say how many it ignored, so all "
            f"{records} count as refused (it may have stored some): {error}"
        )
    unaccounted = _unaccounted(count, records)
    if unaccounted and refused < records:
        return (
            f"Loki refused {count.ignored} of the {count.handled} log records it names of a push of {records}, and "
            f"does not say what it did with the other {unaccounted}: {refused} count as refused: {error}"
        )
    if refused < records:
        return f"Loki refused {refused} of the {records} log records of a push and stored the rest: {error}"
    claim = f" (its answer claims {count.ignored}, more than the push held)" if count.ignored > records else ""
    return f"Loki refused all {records} log records of a push{claim}: {error}"
