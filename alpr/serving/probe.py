"""A health check that runs a real inference: ``python3 -m alpr.serving.probe [--url 127.0.0.1:8000]``.

Triton's ready endpoints answer 200 while a step whose process died fails every request; only an inference through
the whole ensemble shows that the pipeline answers. This probe sends a small blank image to ``plate_recognition``
over HTTP and exits 0 when the answer has the ensemble's outputs, or when the server refuses it only because its
queues are full (busy is alive: a probe must not restart a server under load), and 1 otherwise. It needs only the
standard library, so it runs in the official Triton image and in a Kubernetes exec probe.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

from alpr.spec import ENSEMBLE_NAME, IMAGE_INPUT, MIN_IMAGE_SIDE, OUTPUT_NAMES

# Triton answers 503 (UNAVAILABLE) when a bounded queue refuses a request.
BUSY_STATUS = 503


def probe_request(side: int = MIN_IMAGE_SIDE) -> bytes:
    """A mid-grey ``side`` x ``side`` BGR image as a KServe v2 JSON inference request."""
    request = {
        "inputs": [
            {"name": IMAGE_INPUT, "shape": [side, side, 3], "datatype": "UINT8", "data": [128] * (side * side * 3)}
        ],
        "outputs": [{"name": name} for name in OUTPUT_NAMES],
    }
    return json.dumps(request).encode()


def probe(url: str, timeout_s: float, model: str = ENSEMBLE_NAME) -> tuple[bool, str]:
    """``(healthy, why)`` for the server at ``url`` (host:port of its HTTP endpoint)."""
    request = urllib.request.Request(
        f"http://{url}/v2/models/{model}/infer",
        data=probe_request(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")[:300]
        if error.code == BUSY_STATUS:
            return True, f"busy: {detail}"
        return False, f"HTTP {error.code}: {detail}"
    except (urllib.error.URLError, OSError, ValueError) as error:
        return False, f"no answer: {error}"
    names = {output.get("name") for output in answer.get("outputs", [])}
    missing = sorted(set(OUTPUT_NAMES) - names)
    if missing:
        return False, f"answer without {', '.join(missing)}"
    return True, "answered"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alpr.serving.probe", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8000", help="host:port of the server's HTTP endpoint")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    parser.add_argument("--model", default=ENSEMBLE_NAME)
    args = parser.parse_args(argv)
    healthy, why = probe(args.url, args.timeout, args.model)
    print(f"{'healthy' if healthy else 'unhealthy'}: {why}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
