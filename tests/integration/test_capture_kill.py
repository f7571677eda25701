"""kill -9 a real server under load, once it has acknowledged 100 requests: the next start ships every one of them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import httpx

from llmops.infra.store import LocalStore
from tests.helpers import make_registered_model

# A server in a child process (so it can be killed) that never flushes by itself: every record the store gets
# after the kill came from the spool.
SERVER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from llmops.infra.config import ServeConfig
    from llmops.infra.store import LocalStore
    from llmops.models.serving import start_server
    cfg = ServeConfig(port=0, reload_interval_s=0, flush_every=100_000, flush_interval_s=3600)
    handle = start_server(LocalStore(sys.argv[1]), "lm", cfg, Path(sys.argv[2]))
    print(handle.url, flush=True)
    time.sleep(3600)
""")


KEY = "capture-kill-test-key"


def start(store_root, cache) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "LLMOPS_API_KEY": KEY}  # the admin routes need a key
    child = subprocess.Popen([sys.executable, "-c", SERVER, str(store_root), str(cache)], stdout=subprocess.PIPE,
                             text=True, env=env)
    url = child.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), f"the server did not start (exit {child.poll()})"
    return child, url


def captured_ids(store: LocalStore) -> list[str]:
    return [json.loads(line)["id"] for key in store.list("traffic/lm")
            for line in store.get_text(key).splitlines() if line.strip()]


def test_every_acknowledged_response_survives_kill_9_under_load(tmp_path):
    store = LocalStore(tmp_path / "store")
    make_registered_model(store, "lm")
    child, url = start(store.root, tmp_path / "cache")
    acked: list[str] = []
    stop = threading.Event()

    def client(i: int) -> None:  # a closed loop; the kill ends it with a transport error
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as http:
            while not stop.is_set():
                try:
                    reply = http.post("/v1/completions", json={"model": "lm", "prompt": f"client {i} says",
                                                               "max_tokens": 4, "temperature": 0.9})
                except httpx.TransportError:
                    return
                if reply.status_code == 200:
                    acked.append(reply.json()["id"])

    clients = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    try:
        for thread in clients:
            thread.start()
        deadline = time.monotonic() + 120
        while len(acked) < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        os.kill(child.pid, signal.SIGKILL)  # with requests in flight
        child.wait()
        stop.set()
        for thread in clients:
            thread.join(60)
    assert len(acked) >= 100, "the server did not acknowledge 100 requests"
    assert captured_ids(store) == []  # nothing was shipped before the kill
    child, url = start(store.root, tmp_path / "cache")
    try:
        assert httpx.get(f"{url}/health").json()["capture"]["recovered"] >= len(acked)
        flushed = httpx.post(f"{url}/admin/flush", headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        assert flushed.json()["written"] >= len(acked)
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=60)
    missing = set(acked) - set(captured_ids(store))
    assert not missing, f"{len(missing)} acknowledged responses were lost"
