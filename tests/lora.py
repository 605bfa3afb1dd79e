"""Build a small LoRA adapter for the Gemma 3 270M GGUF, so tests can see an adapter work.

The adapter is random low-rank noise on every layer's attention query and value projections:
meaningless, but strong enough that greedy decoding visibly changes. Written with the `gguf`
package in llama.cpp's adapter format (general.type=adapter, adapter.type=lora, tensors
`<weight>.lora_a` [rank x in] and `<weight>.lora_b` [out x rank], float32).
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

# The adapter id tests serve it under (the `adapter_dir` fixture, tests/conftest.py).
ADAPTER = "acme/tuned-1"


def make_lora(base_gguf: Path, out: Path, rank: int = 8, alpha: float = 16.0,
              strength: float = 0.08, seed: int = 1) -> Path:  # fmt: skip
    reader = gguf.GGUFReader(str(base_gguf))
    shapes = {t.name: [int(d) for d in t.shape] for t in reader.tensors}
    rng = np.random.default_rng(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out), "gemma3")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    for name, (n_in, n_out) in sorted(
        (n, s) for n, s in shapes.items() if n.endswith(("attn_q.weight", "attn_v.weight"))
    ):
        a = rng.normal(0.0, strength, size=(rank, n_in)).astype(np.float32)
        b = rng.normal(0.0, strength, size=(n_out, rank)).astype(np.float32)
        writer.add_tensor(name + ".lora_a", a)
        writer.add_tensor(name + ".lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
