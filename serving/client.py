"""`relevance score`: a rerank client over the Open Inference Protocol (V2), built on tritonclient.http."""

from __future__ import annotations

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
