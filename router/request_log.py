"""The request log: what it keeps of one request, each part clipped to a byte budget. Written
only for deployments with `requestLoggingEnabled` (router/pipeline.py for the synchronous APIs,
router/jobs.py for async requests); each deployment's log is bounded in entries and in bytes
(wakegate/store.py LOG_REQUEST), and skipped while Redis is nearly full (router/storage.py).
Read back as JSON lines (`GET .../requests`) or as the SDK's zip download
(`GET .../request-logs`, `write_zip`)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zipfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from router.dialects import Finish
from router.params import GenerateRequest
from router.storage import StorageWatch
from wakegate.store import Store

log = logging.getLogger(__name__)

# Request-log entries kept per deployment (a Redis stream, trimmed as it grows).
REQUEST_LOG_MAX = 10_000


def clip_text(text: str, budget: int) -> tuple[str, bool]:
    """`text` cut to at most `budget` UTF-8 bytes (never inside a character); whether it was."""
    raw, budget = text.encode(), max(0, budget)
    if len(raw) <= budget:
        return text, False
    return raw[:budget].decode(errors="ignore"), True


def clip_messages(messages: list[dict[str, str]], budget: int) -> tuple[list[dict[str, str]], bool]:
    """Chat messages whose texts together keep at most `budget` bytes, the earliest first."""
    out: list[dict[str, str]] = []
    cut = False
    for message in messages:
        kept: dict[str, str] = {}
        for k, v in message.items():
            kept[k], was = clip_text(v, budget)
            budget -= len(kept[k].encode())
            cut = cut or was
        out.append(kept)
    return out, cut


def clip_parameters(params: dict[str, Any], budget: int) -> tuple[dict[str, Any], bool]:
    """The parameters whose JSON together keeps at most `budget` bytes, the smallest first
    (a huge `stop` or `response_format` goes, the sampling knobs stay); whether any went."""
    sized = sorted(params.items(), key=lambda kv: len(json.dumps(kv[1])) + len(kv[0]))
    kept: dict[str, Any] = {}
    for name, value in sized:
        size = len(json.dumps({name: value}).encode())
        if size > budget:
            break
        kept[name] = value
        budget -= size
    return {k: params[k] for k in params if k in kept}, len(kept) < len(params)


async def write_entry(
    store: Store, storage: StorageWatch, key: str, entry: dict[str, Any], max_bytes: int | None
) -> None:
    """Append an entry to the deployment's log (at most `max_bytes` of entries kept: its
    tenant's quota `maxRequestLogBytesPerDeployment`, None: no limit), unless
    Redis is nearly full; a failure is logged, never the request's."""
    if storage.bulk_refused:
        log.debug("request log of %s skipped: Redis is nearly full", key)
        return
    try:
        await store.log_request(key, entry, REQUEST_LOG_MAX, max_bytes)
        storage.note(len(json.dumps(entry)))
    except Exception:
        log.exception("request log of %s failed", key)


@dataclass
class RequestLogEntry:
    """What the request log keeps of one request; written only when the deployment has
    `requestLoggingEnabled`, never otherwise."""

    api: str
    stream: bool
    req: GenerateRequest
    arrived: float
    at: float = field(default_factory=time.time)
    replica: str | None = None
    queue_wait_s: float | None = None
    ttft_s: float | None = None
    cold: bool = False  # no replica was ready when it was queued (health counts it)
    output: list[str] = field(default_factory=list)
    finish: Finish | None = None
    status: int = 200
    error: str | None = None

    def record(self, max_bytes: int) -> dict[str, Any]:
        """What is stored of the entry; its prompt (or messages), its output, its parameters
        and its error keep at most `max_bytes` bytes each (the setting
        `request_log_max_bytes`), `truncated` says whether any was cut."""
        p = self.req.parameters
        prompt, messages, cut_in = None, None, False
        if self.req.messages is None:
            prompt, cut_in = clip_text(self.req.inputs, max_bytes)
        else:
            messages, cut_in = clip_messages(self.req.messages, max_bytes)
        output, cut_out = clip_text("".join(self.output), max_bytes)
        params, cut_params = clip_parameters(
            p.model_dump(mode="json", exclude_none=True, exclude={"api_token"}), max_bytes
        )
        error, cut_error = clip_text(self.error, max_bytes) if self.error else (self.error, False)
        return {
            "time": datetime.fromtimestamp(self.at, UTC).isoformat(),
            "api": self.api,
            "stream": self.stream,
            "prompt": prompt,
            "messages": messages,
            "truncated": cut_in or cut_out or cut_params or cut_error,
            "parameters": params,
            "adapter": p.adapter_id,
            "output": output,
            "finish_reason": self.finish.reason if self.finish else None,
            "prompt_tokens": self.finish.prompt_tokens if self.finish else None,
            "generated_tokens": self.finish.generated_tokens if self.finish else None,
            "status": self.status,
            "error": error,
            "replica": self.replica,
            "queue_wait_s": self.queue_wait_s,
            "ttft_s": self.ttft_s,
            "duration_s": round(time.monotonic() - self.arrived, 4),
        }


@dataclass(frozen=True)
class LogWindow:
    """What a request-log download asks for: deployment `name`'s entries logged in
    [start_ms, end_ms), of one adapter's requests when `adapter` is set."""

    name: str
    start_ms: int
    end_ms: int
    adapter: str | None
    logging_enabled: bool


Page = list[tuple[str, dict[str, Any]]]  # (stream id "<ms>-<seq>", entry), oldest first


class _Sink:
    """zipfile's output stream: the bytes written since the last `take` (not seekable, so
    zipfile writes each member's sizes after its data and the archive streams)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        self._buf += data
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


class _Archive:
    """The zip being written: one JSON Lines member per UTC hour of requests
    (`requests-2026-12-08T03.jsonl`, one entry a line, oldest first), then `manifest.json`."""

    def __init__(self, sink: _Sink) -> None:
        self.zip = zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6)
        self.member: IO[bytes] | None = None
        self.hour = ""
        self.files: list[str] = []
        self.count = 0

    def add(self, page: Page, adapter: str | None) -> None:
        """Runs in a thread (deflating is CPU work); never two at once."""
        for entry_id, entry in page:
            if adapter is not None and entry.get("adapter") != adapter:
                continue
            hour = _iso(int(entry_id.split("-")[0]))[:13]
            if hour != self.hour or self.member is None:
                self.close_member()
                self.hour = hour
                self.files.append(f"requests-{hour}.jsonl")
                self.member = self.zip.open(self.files[-1], "w")
            self.member.write(json.dumps(entry).encode() + b"\n")
            self.count += 1

    def close_member(self) -> None:
        if self.member is not None:
            self.member.close()
            self.member = None

    def finish(self, window: LogWindow) -> None:
        self.close_member()
        manifest = {
            "deployment": window.name,
            "from": _iso(window.start_ms),
            "to": _iso(window.end_ms),
            "adapterId": window.adapter,
            "requests": self.count,
            "files": self.files,
            "requestLoggingEnabled": window.logging_enabled,
        }
        self.zip.writestr("manifest.json", json.dumps(manifest, indent=2) + "\n")
        self.zip.close()


async def write_zip(
    window: LogWindow,
    read_page: Callable[[str | None], Awaitable[Page]],
    send: Callable[[bytes], Awaitable[None]],
) -> int:
    """Stream the window's entries as a zip through `send`, a page at a time (`read_page`
    takes the last id read, None first), so no more than a page is held; returns how many
    entries went in. `manifest.json`, written last, says what the archive holds: a download
    cut short by an error has no manifest and no central directory, so it never reads as a
    whole archive."""
    sink = _Sink()
    archive = _Archive(sink)
    after: str | None = None
    while page := await read_page(after):
        after = page[-1][0]
        await asyncio.to_thread(archive.add, page, window.adapter)
        if chunk := sink.take():
            await send(chunk)
    archive.finish(window)
    await send(sink.take())
    return archive.count
