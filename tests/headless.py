"""Open a local HTML file in headless Chromium with networking blocked, through the DevTools
protocol (aiohttp's websocket client): console errors, uncaught exceptions, every request the
page makes, the result of a JavaScript expression, and a screenshot.

Chromium: Debian's ``chromium`` package (``make test`` installs it when run as root with
apt-get; tests skip with the reason when it is absent).
"""
from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: flags that work in a container without a GPU or sandbox, and keep the browser off the network:
#: no background services, every host name resolves to nothing
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--remote-debugging-port=0")
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


def chromium() -> str | None:
    """The Chromium executable, or None."""
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


@dataclass
class PageRun:
    """What happened while the page was open."""

    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    value: Any = None  # the evaluated expression's result
    screenshot: bytes = b""

    @property
    def remote(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(LOCAL_SCHEMES)]


def open_page(path: Path, expression: str, width: int = 1400, height: int = 2400, settle_s: float = 1.5,
              timeout_s: float = 60.0) -> PageRun:
    """Load ``path`` in headless Chromium, wait for its load event and ``settle_s`` more, evaluate
    ``expression`` (its value as JSON) and take a screenshot of the window."""
    exe = chromium()
    if exe is None:
        raise FileNotFoundError("chromium not found")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                                 "about:blank"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        try:
            port = devtools_port(proc, timeout_s)
            return asyncio.run(asyncio.wait_for(drive(port, path.resolve().as_uri(), expression, settle_s),
                                                timeout_s))
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def devtools_port(proc: subprocess.Popen, timeout_s: float) -> int:
    """The port of 'DevTools listening on ws://127.0.0.1:PORT/...' on Chromium's stderr."""
    import select
    import time

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stderr], [], [], 1.0)
        if ready:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            if m := re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line):
                return int(m.group(1))
    raise RuntimeError(f"chromium did not start its DevTools server (exit status {proc.poll()})")


async def drive(port: int, url: str, expression: str, settle_s: float) -> PageRun:
    import aiohttp

    run = PageRun()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
            target = next(t for t in await resp.json() if t["type"] == "page")
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            ids = iter(range(1, 1 << 30))
            pending: dict[int, asyncio.Future] = {}
            loaded = asyncio.Event()

            async def reader() -> None:
                async for msg in ws:
                    m = json.loads(msg.data)
                    if "id" in m:
                        pending.pop(m["id"]).set_result(m)
                    else:
                        event(run, m, loaded)

            task = asyncio.create_task(reader())

            async def call(method: str, **params: Any) -> dict:
                i = next(ids)
                pending[i] = asyncio.get_running_loop().create_future()
                await ws.send_str(json.dumps({"id": i, "method": method, "params": params}))
                reply = await pending[i]
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

            for domain in ("Runtime", "Log", "Network", "Page"):
                await call(f"{domain}.enable")
            await call("Page.navigate", url=url)
            await loaded.wait()
            await asyncio.sleep(settle_s)
            result = await call("Runtime.evaluate", expression=f"JSON.stringify({expression})", returnByValue=True)
            if "exceptionDetails" in result:
                run.errors.append(f"evaluate: {result['exceptionDetails'].get('text')}")
            else:
                run.value = json.loads(result["result"]["value"])
            shot = await call("Page.captureScreenshot", format="png")
            run.screenshot = base64.b64decode(shot["data"])
            task.cancel()
    return run


def event(run: PageRun, m: dict, loaded: asyncio.Event) -> None:
    """Record one DevTools event."""
    method, p = m.get("method"), m.get("params", {})
    if method == "Page.loadEventFired":
        loaded.set()
    elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
        run.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
    elif method == "Runtime.exceptionThrown":
        d = p.get("exceptionDetails", {})
        run.errors.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
    elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
        run.errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
    elif method == "Network.requestWillBeSent":
        run.requests.append(p["request"]["url"])
    elif method == "Network.loadingFailed":
        run.errors.append(f"load failed: {p.get('errorText')}")
