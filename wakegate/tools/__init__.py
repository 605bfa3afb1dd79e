"""Tooling: the command line, the one-command stack, the embedded infrastructure and trace
replay. The top layer: it may import the contracts (wakegate/), the gateway (router/) and
the scaler (scaler/); nothing below imports it."""
