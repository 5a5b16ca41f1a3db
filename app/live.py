"""``dreamgym live``: a person in WebXR is the partner, the shipped social avatar answers (``avatars.live``)."""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from pathlib import Path


def run(cfg) -> int:
    """Serve live sessions until Ctrl-C (``configs/live.yaml``)."""
    import torch

    from dreamgym.avatars.live.record import save_session
    from dreamgym.avatars.live.server import LiveServer
    from dreamgym.avatars.live.session import LiveSession

    torch.set_num_threads(int(cfg.threads))
    new_session = functools.partial(
        LiveSession,
        backend=cfg.backend,
        room_seed=int(cfg.room_seed),
        avatar=cfg.avatar,
        world_model=cfg.world_model,
        physics=cfg.physics,
        gesture_words=bool(cfg.gesture_words),
    )
    count = itertools.count(1)

    def make() -> LiveSession:
        log = Path(str(cfg.log)).expanduser() / f"session-{time.strftime('%Y%m%d-%H%M%S')}-{next(count)}.jsonl" if cfg.log else None
        return new_session(log_path=log)

    new_session().hello()  # a wrong backend, avatar or world model is refused now, not when the headset connects
    save = (lambda s: save_session(s, cfg.save)) if cfg.save else None
    server = LiveServer(make, host=cfg.host, port=int(cfg.port), secure=cfg.secure, cert_dir=cfg.cert_dir, save=save)

    async def main() -> None:
        ready = asyncio.Event()
        task = asyncio.create_task(server.run(ready))
        await ready.wait()
        print(f"dreamgym live ({cfg.backend}): open {server.url()}", flush=True)
        if server.fingerprint:
            print(f"  self-signed certificate, SHA-256 {server.fingerprint}", flush=True)
        print(f"  a Quest on USB can use loopback instead: adb reverse tcp:{server.port} tcp:{server.port}", flush=True)
        await task

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return 0
