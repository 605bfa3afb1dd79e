"""The simulator: a simulated GPU pool and simulated engines, for load/scale tests and replay.

`scaler.sim.host` is one process with one event loop that hosts every simulated replica, each
a real HTTP server on its own port speaking the OpenAI completions API like llama.cpp's; the
`sim` backend (scaler/backends/sim.py) drives it over HTTP.
"""
