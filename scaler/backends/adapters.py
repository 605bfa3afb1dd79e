"""Where LoRA adapters come from: a local directory or a URL, as configured.

An adapter id is Predibase-style `repo/version` (or any path of safe segments). With
`WAKEGATE_ADAPTER_DIR` it is `<dir>/<id>.gguf`; with `WAKEGATE_ADAPTER_URL` (a template with
`{id}`) it is downloaded once into `<state_dir>/adapters/`. The directory wins when both are
set and it has the file.
"""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

from wakegate.engines import ADAPTER_ID, EngineRefused
from wakegate.settings import Settings

FIELD = "config.preloadedAdapters"


def adapter_path(adapter_id: str, settings: Settings) -> Path:
    if not ADAPTER_ID.fullmatch(adapter_id) or ".." in adapter_id:
        raise EngineRefused(FIELD, f"{adapter_id!r} is not a valid adapter id")
    if settings.adapter_dir is not None:
        local = Path(settings.adapter_dir) / f"{adapter_id}.gguf"
        if local.is_file():
            return local
    if settings.adapter_url:
        cached = settings.state_dir / "adapters" / f"{adapter_id}.gguf"
        if not cached.is_file():
            url = settings.adapter_url.format(id=adapter_id)
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(".part")
            try:
                with urllib.request.urlopen(url, timeout=60) as resp, open(partial, "wb") as fh:
                    shutil.copyfileobj(resp, fh)
            except OSError as exc:
                raise EngineRefused(FIELD, f"adapter {adapter_id!r}: {url}: {exc}") from None
            partial.replace(cached)
        return cached
    where = [str(settings.adapter_dir)] if settings.adapter_dir else []
    where += [settings.adapter_url] if settings.adapter_url else []
    raise EngineRefused(
        FIELD,
        f"adapter {adapter_id!r} not found"
        + (f" in {', '.join(where)}" if where else ": set WAKEGATE_ADAPTER_DIR or _URL"),
    )
