"""A resilient MQTT connection: publish best effort, subscribe with automatic reconnection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlparse

import aiomqtt

from wakegate.topics import PAYLOADS, Event, Kind, parse_topic, topic

log = logging.getLogger(__name__)

Handler = Callable[[str, Event], Awaitable[None]]


class Bus:
    """Owns one MQTT client. Run `run()` as a background task; `publish` never raises."""

    def __init__(
        self,
        url: str,
        client_name: str,
        subscriptions: Sequence[str] = (),
        handler: Handler | None = None,
    ) -> None:
        parsed = urlparse(url)
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or 1883
        self._username = parsed.username
        self._password = parsed.password
        self._identifier = f"{client_name}-{uuid.uuid4().hex[:8]}"
        self._subscriptions = list(subscriptions)
        self._handler = handler
        self._client: aiomqtt.Client | None = None
        self._last_sent: dict[tuple[str, str], float] = {}
        self.connected = asyncio.Event()

    async def run(self) -> None:
        backoff = 0.2
        while True:
            try:
                async with aiomqtt.Client(
                    self._host,
                    self._port,
                    username=self._username,
                    password=self._password,
                    identifier=self._identifier,
                    keepalive=15,
                ) as client:
                    for sub in self._subscriptions:
                        await client.subscribe(sub, qos=1)
                    self._client = client
                    self.connected.set()
                    backoff = 0.2
                    log.info("mqtt connected to %s:%s", self._host, self._port)
                    async for message in client.messages:
                        await self._deliver(str(message.topic), message.payload)
            except aiomqtt.MqttError as exc:
                log.warning("mqtt connection lost (%s); retrying in %.1fs", exc, backoff)
            finally:
                self._client = None
                self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _deliver(self, topic_name: str, payload: object) -> None:
        parsed = parse_topic(topic_name)
        if parsed is None or self._handler is None or not isinstance(payload, bytes | bytearray):
            return
        _, kind = parsed
        model = PAYLOADS.get(kind)
        if model is None:
            return
        try:
            event = model.model_validate_json(payload)
        except ValueError:
            log.warning("ignoring malformed %s event on %s", kind, topic_name)
            return
        try:
            await self._handler(kind, event)
        except Exception:
            log.exception("handler failed for %s", topic_name)

    async def publish(self, kind: Kind, event: Event, qos: int = 1) -> bool:
        client = self._client
        if client is None:
            return False
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(2):
                await client.publish(
                    topic(event.deployment, kind), event.model_dump_json().encode(), qos=qos
                )
                return True
        return False

    async def publish_at_most(
        self, every_s: float, kind: Kind, deployment: str, make: Callable[[], Event]
    ) -> bool:
        """Publish `make()` unless this kind of event went out for `deployment` within
        `every_s` (the event is only made when it goes out: this runs once per request).

        For periodic reports (queue depth) that are superseded by the next one: QoS 0, and
        a burst of requests yields one message, not one per request.
        """
        now = time.monotonic()
        key = (kind, deployment)
        if now - self._last_sent.get(key, -math.inf) < every_s:
            return False
        self._last_sent[key] = now
        return await self.publish(kind, make(), qos=0)
