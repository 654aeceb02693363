from __future__ import annotations

import logging
import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# grpcio's AioServer.__dealloc__ logs, at DEBUG, a server freed before it was stopped, passing the object itself as
# an argument (grpc/_cython/_cygrpc/aio/server.pyx.pxi). pytest's log capture keeps every record, so a test at DEBUG
# whose collection frees such a server (a receiver whose bind failed left one) keeps it past its deallocation: freed
# again with the records, it crashes the run at a random later point. The record is never made
# with this logger above DEBUG. The agent's own logging keeps libraries at WARNING and keeps no records.
logging.getLogger("grpc._cython.cygrpc").setLevel(logging.INFO)
