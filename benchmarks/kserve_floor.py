"""The serving benchmark's floor: a KServe model server that answers a rerank request with a response of nearly the
same shape as `relevance serve` (every candidate with a score, five probabilities and its unknown flag; not the
version fields) without computing anything. Run with the same flags, on the same core, through the same client, it
is what KServe, uvicorn and the HTTP round trip cost on this machine, whatever the model does.

    .venv/bin/python -m benchmarks.kserve_floor --http_port 8080
"""

from __future__ import annotations

import argparse
import logging

import kserve

MODEL = "relevance-student"


class Floor(kserve.Model):
    def __init__(self):
        super().__init__(MODEL)
        self.ready = True

    def predict(self, payload, headers=None):
        instance = payload["instances"][0]
        return {"predictions": [{"query": instance["query"], "locale": instance.get("locale"), "items": [
            {"item_id": item_id, "score": 1.5, "probs": [0.1, 0.2, 0.3, 0.2, 0.2], "unknown": False}
            for item_id in instance["candidates"]]}]}


def main() -> None:
    from kserve.logging import KSERVE_TRACE_LOGGER_NAME

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http_port", type=int, required=True)
    args = parser.parse_args()
    server = kserve.ModelServer(http_port=args.http_port, enable_grpc=False, workers=1,
                                enable_latency_logging=False)
    # The logging `relevance serve` keeps by default (relevance.serving.server.run_server).
    logging.getLogger(KSERVE_TRACE_LOGGER_NAME).setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    server.start([Floor()])


if __name__ == "__main__":
    main()
