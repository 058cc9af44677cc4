"""A stand-in for "your app": calls Apideck through the sidecar in a loop.

Standard library only. It holds no API key and no app id: the sidecar on 127.0.0.1 injects
both, which is the point of running one. It prints one JSON line per call.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request

PROXY_URL = os.environ.get("APIDECK_PROXY_URL", "http://127.0.0.1:8475")
API_PATH = os.environ.get("EXAMPLE_API_PATH", "/crm/contacts?limit=1")
CONSUMER_ID = os.environ.get("EXAMPLE_CONSUMER_ID", "test-consumer")
SERVICE_ID = os.environ.get("EXAMPLE_SERVICE_ID", "salesforce")
INTERVAL_S = float(os.environ.get("EXAMPLE_INTERVAL_S", "2"))
if not PROXY_URL.startswith(("http://", "https://")):
    sys.exit(f"APIDECK_PROXY_URL must be an http(s) URL, got {PROXY_URL!r}")
# 0 means "until stopped" (compose); a number makes a bounded smoke run.
ITERATIONS = int(os.environ.get("EXAMPLE_ITERATIONS", "0"))

# Talk to the sidecar directly even if the environment sets an HTTP(S)_PROXY.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call_once() -> dict[str, object]:
    request = urllib.request.Request(  # noqa: S310  # scheme is checked at import above
        PROXY_URL + API_PATH,
        headers={"x-apideck-consumer-id": CONSUMER_ID, "x-apideck-service-id": SERVICE_ID},
    )
    started = time.monotonic()
    try:
        with _opener.open(request, timeout=30) as response:
            status = response.status
            response.read()
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        return {"event": "call_failed", "error": type(exc).__name__}
    return {"event": "call", "status": status, "ms": round((time.monotonic() - started) * 1000)}


def main() -> int:
    stop = threading.Event()
    # PID 1 in a container gets no default SIGTERM handler; without this `docker stop` would
    # wait out the whole grace period and then SIGKILL us.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    done = 0
    while not stop.is_set() and (ITERATIONS == 0 or done < ITERATIONS):
        print(json.dumps(call_once()), flush=True)
        done += 1
        stop.wait(INTERVAL_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
