"""The transformer's predictor client without a predictor: a bad URL is refused up front, and a predictor that is
down gives a one-line PredictorError naming it, over REST and over gRPC (the real Triton: test_server.py)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from relevance.serving.client import PredictorError, RemoteStudent, check_predictor_url
from relevance.serving.process import free_port


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "tcp://host:1", "http://", "grpc:///"])
def test_a_predictor_url_without_a_known_scheme_and_host_is_refused(url):
    with pytest.raises(ValueError, match="expected http://host:port, https://host\\[:port\\], grpc://host:port"):
        check_predictor_url(url)


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_a_predictor_that_is_down_is_a_one_line_error_naming_it(scheme):
    url = f"{scheme}://127.0.0.1:{free_port()}"
    inputs = {"query": np.zeros((2, 4), np.float32), "item": np.zeros((2, 4), np.float32),
              "lexical": np.zeros((2, 11), np.float32)}

    async def call(method: str):
        client = RemoteStudent(url, timeout_s=2.0)
        try:
            if method == "ready":
                return await client.is_ready("relevance-student")
            return await client.predict("relevance-student", inputs, "request-1")
        finally:
            await client.close()

    for method in ("ready", "predict"):
        with pytest.raises(PredictorError) as raised:
            asyncio.run(call(method))
        message = str(raised.value)
        assert message.startswith(f"predictor {url}: ") and "\n" not in message and len(message) < 400, message
