"""When a request its replica failed is tried again, elsewhere: one rule for the unary, stream
and async paths (router/pipeline.py, router/jobs.py)."""

from __future__ import annotations

from router.dialects import UpstreamError

# A request is tried this many times in all; a replica that fails one before sending anything
# gets no new requests from any gateway for SUSPECT_MS.
ATTEMPTS = 3
SUSPECT_MS = 10_000


def retry_elsewhere(exc: UpstreamError, attempts_made: int) -> bool:
    """Whether a request whose replica failed with `exc` goes to another replica: the replica
    failed (it did not refuse the request itself), before its first byte (nothing reached the
    client), and tries are left."""
    return exc.retryable and exc.before_first_byte and attempts_made < ATTEMPTS
