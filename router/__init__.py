"""The gateway: control-plane API, request queueing, wake-ups, routing and streaming."""
