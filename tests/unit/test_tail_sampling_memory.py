"""max_buffered_bytes bounds the memory the buffer really takes, measured in a fresh process.

Parsed protobuf takes several times its wire size, so a bound kept in wire bytes let the process grow 3.4 times
past it. The measurement runs in its own interpreter, so that no other test's garbage moves its RSS.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

BOUND_MIB = 32

MEASURE = textwrap.dedent(
    f"""
    import gc, json
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from agent.testing.workload import Workload
    from tests.unit.test_tail_sampling_support import rig

    def rss_bytes():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) * 1024

    workload = Workload(seed=3)
    wire = []
    for _ in range(300):  # SDK-sized requests: 64 workflow traces each
        request = ExportTraceServiceRequest()
        for part, _ in workload.requests(64):
            request.resource_spans.extend(part.resource_spans)
        wire.append(request.SerializeToString())
    r = rig(decision_wait="600s", decision_wait_after_root="0s", max_buffered_bytes={BOUND_MIB} << 20, max_traces=10**7)
    forced = 0.0
    gc.collect()
    before = rss_bytes()
    for raw in wire:
        r.traces.consume_sized(ExportTraceServiceRequest.FromString(raw), len(raw))
        forced = r.metric("otel_sidecar_sampling_forced_decisions_total", reason="max_buffered_bytes")
        if forced:
            break
    gc.collect()
    print(json.dumps({{"growth": rss_bytes() - before, "forced": forced,
                       "gauge": r.metric("otel_sidecar_sampling_bytes_buffered")}}))
    """
)


def test_the_byte_bound_holds_the_process_near_it_not_several_times_past_it() -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", MEASURE], cwd=root, capture_output=True, text=True, timeout=300, check=True
    )
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    bound = BOUND_MIB << 20
    assert measured["forced"] > 0  # the bound was reached and decided the oldest traces
    assert measured["gauge"] <= bound
    # The buffer's real growth stays near the bound (3.4 times it when the bound counted wire bytes).
    assert measured["growth"] < 1.6 * bound, measured
