"""The simulator: a simulated GPU pool and simulated engines, for load/scale tests and replay.

`scaler.sim.host` is one process with one event loop that hosts every simulated replica
(`scaler.sim.replica`), each a real HTTP server on its own port speaking the OpenAI completions
API like llama.cpp's, on a simulated GPU pool (`scaler.sim.pool`); the engine's parameters are
`wakegate.engines.sim_timing`. The `sim` backend (scaler/backends/sim.py) drives the host over HTTP.
"""
