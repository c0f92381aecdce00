"""The Server-Sent Events stream of one run (GET /api/export/runs/{id}/events).

Events come from the database (`run_events`, one `id:` per event = its per-run sequence number),
so a client that reconnects with `Last-Event-ID: N` gets exactly the events after N, whichever
node answers. The stream ends after the run's final event (succeeded, failed, cancelled); while it
waits it sends a comment heartbeat (`: heartbeat`) every `heartbeat` seconds (15 s by default) so
proxies keep the connection open.

Hand-written loop, library encoding: the wire format is FastAPI's `format_sse_event`; the loop is
ours because it must wait on the database (woken in-process by the store's Notifier, and polling
once a second for other nodes' writes) and send the heartbeat on its own schedule.
"""
from __future__ import annotations

import json
import time
from typing import AsyncIterator

import anyio
from fastapi.sse import format_sse_event
from starlette.concurrency import run_in_threadpool

from stella_build.service.models import TERMINAL

HEARTBEAT = b": heartbeat\n\n"
_DB_POLL = 1.0     # seconds between database polls when nothing was notified in-process
_TICK = 0.05       # seconds between checks of the in-process notifier
_BATCH = 500       # events read per database query


async def run_events(store, run_id: str, after: int, heartbeat: float) -> AsyncIterator[bytes]:
    """SSE bytes for `run_id` after event number `after` (0: from the start), until its end."""
    notifier = store.notifier
    seen = -1
    last_poll = 0.0
    last_sent = time.monotonic()
    while True:
        now = time.monotonic()
        if notifier.version != seen or now - last_poll >= _DB_POLL:
            seen, last_poll = notifier.version, now
            events = await run_in_threadpool(store.events_after, run_id, after, _BATCH)
            if len(events) == _BATCH:
                last_poll = 0.0  # more are waiting: poll again at once
            for e in events:
                after = e.seq
                last_sent = now
                yield format_sse_event(data_str=json.dumps(e.data, sort_keys=True), event=e.type, id=str(e.seq))
                if e.type in TERMINAL:
                    return
            if not events:
                status = await run_in_threadpool(store.status_of, run_id)
                if status is None or status in TERMINAL:  # pruned, or resumed after the end
                    return
        if now - last_sent >= heartbeat:
            last_sent = now
            yield HEARTBEAT
        await anyio.sleep(_TICK)
