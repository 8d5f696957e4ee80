"""The clients of the Open Inference Protocol (V2): `relevance score`'s rerank request (tritonclient.http), and the
transformer's calls to its predictor, Triton, over REST or gRPC (:class:`RemoteStudent`)."""

from __future__ import annotations

import asyncio

import numpy as np

OUTPUTS = ("item_id", "score", "probs", "unknown")


class ScoreError(RuntimeError):
    pass


def triton_client(url: str, timeout_s: float = 10.0):
    """A tritonclient.http client for ``http://host:port`` or ``https://host[:port]`` (tritonclient itself wants
    the host without a scheme, and ``ssl=True`` for https)."""
    import tritonclient.http as httpclient

    scheme, separator, host = url.partition("://")
    if not separator:
        scheme, host = "http", url
    if scheme not in ("http", "https") or not host:
        raise ScoreError(f"{url!r}: expected http://host:port or https://host[:port]")
    return httpclient.InferenceServerClient(host.rstrip("/"), ssl=scheme == "https", connection_timeout=timeout_s,
                                            network_timeout=timeout_s)


def rerank(url: str, model: str, query: str, candidates: list[str], locale: str = "",
           timeout_s: float = 10.0) -> dict:
    """{"items": [{"item_id", "score", "probs", "unknown"}]} best first, from the server at ``url``."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    if not candidates:
        raise ScoreError("give at least one candidate item id")
    client = triton_client(url, timeout_s)
    inputs = []
    for name, values in (("query", [query]), ("candidates", candidates), ("locale", [locale])):
        tensor = httpclient.InferInput(name, [len(values)], "BYTES")
        tensor.set_data_from_numpy(np.array(values, dtype=object), binary_data=True)
        inputs.append(tensor)
    try:
        result = client.infer(model, inputs, outputs=[httpclient.InferRequestedOutput(n, binary_data=True)
                                                      for n in OUTPUTS])
    except InferenceServerException as error:
        raise ScoreError(f"{url}: {error.message()}") from None
    except OSError as error:
        raise ScoreError(f"{url}: cannot connect ({error})") from None
    finally:
        client.close()
    ids = [i.decode("utf-8") if isinstance(i, bytes) else str(i) for i in result.as_numpy("item_id")]
    return {"items": [{"item_id": item_id, "score": float(score), "probs": [float(p) for p in probs],
                       "unknown": bool(unknown)}
                      for item_id, score, probs, unknown in zip(ids, result.as_numpy("score"),
                                                                 result.as_numpy("probs"),
                                                                 result.as_numpy("unknown"))]}


class PredictorError(RuntimeError):
    """The predictor (Triton) refused a request or could not be reached; the message names it."""


PREDICTOR_SCHEMES = ("http", "https", "grpc", "grpcs")


def check_predictor_url(url: str) -> str:
    """``url`` if it names a predictor RemoteStudent can call, else a ValueError saying what it expects."""
    scheme, separator, host = url.partition("://")
    if not separator or scheme not in PREDICTOR_SCHEMES or not host.rstrip("/"):
        raise ValueError(f"predictor {url!r}: expected http://host:port, https://host[:port], grpc://host:port or "
                         "grpcs://host[:port]")
    return url


class RemoteStudent:
    """The student's serving graph on a V2 predictor (Triton), over REST (``http://``, ``https://``;
    tritonclient.http.aio with binary tensors) or gRPC (``grpc://``, ``grpcs://``; KServe's own
    InferenceGRPCClient, since tritonclient.grpc's protos collide with KServe's in one process). Both are async,
    so a slow predictor never blocks the transformer's event loop."""

    def __init__(self, url: str, timeout_s: float = 5.0):
        scheme, _, host = check_predictor_url(url).partition("://")
        host = host.rstrip("/")
        self.url, self.grpc, self.timeout_s = url, scheme.startswith("grpc"), timeout_s
        if self.grpc:
            from kserve import InferenceGRPCClient, InferInput, InferRequest

            self._grpc_types = (InferInput, InferRequest)  # imported once here, not on every request
            # retries: gRPC's retry policy needs maxAttempts >= 2 (it retries UNAVAILABLE only); 1 is refused.
            self.client = InferenceGRPCClient(host, use_ssl=scheme == "grpcs", timeout=timeout_s, retries=2)
        else:
            import tritonclient.http.aio as httpclient

            self._http = httpclient
            self.client = httpclient.InferenceServerClient(host, ssl=scheme == "https", conn_timeout=timeout_s)

    async def is_ready(self, model: str) -> bool:
        try:
            return bool(await self.client.is_model_ready(model))
        except Exception as error:  # each client raises its own kinds; any of them means "not ready"
            raise PredictorError(f"predictor {self.url}: {_message(error)}") from None

    async def predict(self, model: str, inputs: dict[str, np.ndarray], request_id: str = "") -> np.ndarray:
        """``probs`` [N, K] for the graph's inputs (one query row per candidate)."""
        try:
            if self.grpc:
                InferInput, InferRequest = self._grpc_types
                tensors = [InferInput(name, list(array.shape), "FP32", data=np.ascontiguousarray(array, np.float32))
                           for name, array in inputs.items()]
                response = await self.client.infer(InferRequest(model, tensors, request_id=request_id or None))
                return next(o for o in response.outputs if o.name == "probs").as_numpy()
            httpclient = self._http
            tensors = []
            for name, array in inputs.items():
                tensor = httpclient.InferInput(name, list(array.shape), "FP32")
                tensor.set_data_from_numpy(np.ascontiguousarray(array, np.float32), binary_data=True)
                tensors.append(tensor)
            # (infer's own `timeout` is Triton's server-side queue timeout, in microseconds; this one is ours)
            result = await asyncio.wait_for(self.client.infer(
                model, tensors, request_id=request_id,
                outputs=[httpclient.InferRequestedOutput("probs", binary_data=True)]), self.timeout_s)
            return result.as_numpy("probs")
        except asyncio.TimeoutError:
            raise PredictorError(f"predictor {self.url}: no answer within {self.timeout_s} s") from None
        except Exception as error:  # tritonclient's InferenceServerException, grpc's AioRpcError, OSError, …
            raise PredictorError(f"predictor {self.url}: {_message(error)}") from None

    async def close(self) -> None:
        await self.client.close()


def _message(error: Exception) -> str:
    """One line for a client's error: gRPC's code and details (not its multi-line debug string), tritonclient's
    message, or the exception's text."""
    if callable(getattr(error, "code", None)) and callable(getattr(error, "details", None)):
        return f"{error.code().name}: {error.details()}"
    if callable(getattr(error, "message", None)):
        return str(error.message())
    return str(error) or type(error).__name__
