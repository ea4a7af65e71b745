"""The FastRTC reference server: `Stream(ReplyOnPause(echo), modality="audio", mode="send-receive")` on uvicorn.

Runs in its own virtual environment (bench/work/fastrtc-venv, made by bench/run_bench.py), never in callbridge's:

    HF_HOME=bench/work/hf HF_HUB_OFFLINE=1 bench/work/fastrtc-venv/bin/python bench/fastrtc_server.py --port 8100

FastRTC 0.0.34 fetches its VAD with `hf_hub_download("freddyaboulton/silero-vad", "silero_vad.onnx")`. There is
no model hub here, so `install_model` puts the silero_vad.onnx from the silero-vad wheel into the hub cache
layout for that repository, and the server runs with HF_HUB_OFFLINE=1.

That file is Silero v5/v6 (inputs `input`, `state` (2, B, 128), `sr`; 512-sample windows at 16 kHz with 64
samples of context), while FastRTC's `SileroVADModel.__call__` speaks the v4 interface (`h`, `c` (2, B, 64),
1024-sample windows). FastRTC swallows the resulting error and reports infinite speech, so it would never
reply. `v5_initial_state` and `v5_call` bridge the difference and nothing else: they keep FastRTC's
1024-sample windows and pause algorithm, run the v5 model on each window's two 512-sample halves with the
state and context carried along, and return the higher probability of the two. Everything else is FastRTC as installed.

The module imports only the standard library at top level so that run_bench.py (callbridge's venv) can use
`install_model` without FastRTC.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

HUB_REPO = "freddyaboulton/silero-vad"
HUB_FILE = "silero_vad.onnx"
#: Any 40-hex-digit name works as the cached snapshot's commit.
SNAPSHOT = "0" * 40


def install_model(onnx_file: Path, hf_home: Path) -> Path:
    """Place `onnx_file` where `hf_hub_download(HUB_REPO, HUB_FILE)` finds it offline under `hf_home`."""
    repo_dir = hf_home / "hub" / ("models--" + HUB_REPO.replace("/", "--"))
    target = repo_dir / "snapshots" / SNAPSHOT / HUB_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists() or target.stat().st_size != onnx_file.stat().st_size:
        shutil.copyfile(onnx_file, target)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(SNAPSHOT)
    return target


V5_HALF = 512  # v5 window at 16 kHz
V5_CONTEXT = 64  # samples of the previous window that v5 expects in front of each window


def v5_initial_state(self: Any, batch_size: int) -> tuple[Any, Any]:
    """Replaces `SileroVADModel.get_initial_state`: the v5 recurrent state and the audio context."""
    import numpy as np

    return np.zeros((2, batch_size, 128), np.float32), np.zeros((batch_size, V5_CONTEXT), np.float32)


def v5_call(self: Any, x: Any, state: tuple[Any, Any], sr: int) -> tuple[Any, tuple[Any, Any]]:
    """Replaces `SileroVADModel.__call__`: one FastRTC window through v5 as two halves; the higher probability."""
    import numpy as np

    if x.ndim == 1:
        x = x[None, :]
    rnn, context = state
    rate = np.array(sr, dtype=np.int64)
    best = None
    for start in range(0, x.shape[1], V5_HALF):
        window = np.concatenate([context, x[:, start : start + V5_HALF]], axis=1)
        out, rnn = self.session.run(None, {"input": window, "state": rnn, "sr": rate})
        context = window[:, -V5_CONTEXT:]
        best = out if best is None else np.maximum(best, out)
    return best, (rnn, context)


def build_app(concurrency_limit: int | None = None) -> Any:
    from fastapi import FastAPI
    from fastrtc import ReplyOnPause, Stream
    from fastrtc.pause_detection import silero

    silero.SileroVADModel.get_initial_state = v5_initial_state  # type: ignore[method-assign]
    silero.SileroVADModel.__call__ = v5_call  # type: ignore[method-assign,assignment]

    def echo(audio: tuple[int, Any]) -> Any:
        yield audio

    # concurrency_limit None keeps FastRTC's default ('default': one call at a time).
    limit = {} if concurrency_limit is None else {"concurrency_limit": concurrency_limit}
    stream = Stream(ReplyOnPause(echo), modality="audio", mode="send-receive", **limit)
    app = FastAPI()
    stream.mount(app)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--concurrency-limit", type=int, help="calls at once (FastRTC's default is one)")
    args = parser.parse_args()
    import uvicorn

    uvicorn.run(build_app(args.concurrency_limit), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
