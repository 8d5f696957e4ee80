"""The student's frozen bi-encoder and its content-addressed embedding cache.

Embeddings are sentence-transformers style: mean pooling over tokens, then L2 normalisation (how
all-MiniLM-L6-v2 was trained; Reimers & Gurevych, 2019, "Sentence-BERT"). Item embeddings are cached by a hash
of (encoder fingerprint, text), so when the catalog changes only new or edited items are embedded again.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from relevance.common.files import sha256_of_files
from relevance.common.runtime import autocast, device, progress_bar, resolve_precision
from relevance.models.backbones import resolve_backbone
from relevance.models.pooling import pool_hidden


TOWER_MANIFEST = "towers.json"  # what relevance.student.towers writes beside tuned towers
QUERY_TOWER_DIR = "query"  # separate towers (student.towers.shared false): the query tower's folder in the output
QUERY_TOWER_MANIFEST = "query_tower.json"  # what relevance.student.query_tower writes beside a query tower


def separate_query_tower(path: str | Path) -> Path | None:
    """The query tower of tuned separate towers at ``path`` (their ``query/`` folder), or None: ``path`` embeds
    queries and items alike (a shared tower, or any other model)."""
    manifest = Path(path) / TOWER_MANIFEST
    if manifest.exists() and json.loads(manifest.read_text()).get("shared") is False:
        return Path(path) / QUERY_TOWER_DIR
    return None


def check_query_tower(query_encoder: "BiEncoder", encoder: "BiEncoder") -> None:
    """Refuse a query tower distilled into another tower's space than ``encoder``'s (its ``query_tower.json``
    records the tower's fingerprint): its query vectors would be compared with items they were never trained
    against. Separate towers' query/ folder goes with its own item tower only; any other model passes."""
    parent = Path(query_encoder.path).parent
    if separate_query_tower(parent) == Path(query_encoder.path) and parent.resolve() != Path(encoder.path).resolve():
        raise ValueError(f"query encoder {query_encoder.name} is the query tower of separate towers {parent}, but "
                         f"student.encoder {encoder.name} is another tower: name {parent} as student.encoder")
    manifest = Path(query_encoder.path) / QUERY_TOWER_MANIFEST
    if not manifest.exists():
        return
    trained_into = json.loads(manifest.read_text()).get("tower_fingerprint")
    if trained_into != encoder.fingerprint:
        raise ValueError(f"query encoder {query_encoder.name} was distilled into the space of encoder {trained_into}, "
                         f"but student.encoder {encoder.name} is encoder {encoder.fingerprint}: distil a query tower "
                         "from this encoder (`relevance distil-query-tower`) or name the one it was made from")


class BiEncoder:
    def __init__(self, name: str, max_length: int = 64, precision: str = "auto"):
        from transformers import AutoModel, AutoTokenizer

        self.name = name
        self.path = resolve_backbone(name)
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        if self.tokenizer.pad_token is None:  # decoder encoders: padding is masked out by mean pooling anyway
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.tokenizer.padding_side = "right"
        self.device = device()
        self.model = AutoModel.from_pretrained(self.path).to(self.device).eval()
        self.precision = resolve_precision(precision, self.device)
        weights = sorted(Path(self.path).glob("*.safetensors")) or sorted(Path(self.path).glob("*.bin"))
        if not weights:
            raise FileNotFoundError(f"{self.path}: no *.safetensors or *.bin weights to fingerprint the encoder by")
        # What the vectors depend on: the weights and the truncation length (not the numeric precision, whose
        # effect on the vectors is well below what the student can notice).
        self.fingerprint = hashlib.sha256(f"{sha256_of_files(weights)}:{max_length}".encode()).hexdigest()[:16]

    @property
    def dimension(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 256, on_batch=None) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        lengths = np.array([len(t) for t in texts])
        order = np.argsort(lengths, kind="stable")  # similar lengths together: less padding
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            batch = self.tokenizer([texts[i] for i in index], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            with autocast(self.precision, self.device):
                hidden = self.model(**batch).last_hidden_state
            vectors = sentence_vectors(hidden, batch["attention_mask"])
            out[index] = vectors.cpu().numpy()
            if on_batch:
                on_batch(len(index))
        return out


def sentence_vectors(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The bi-encoder's vectors from its last hidden states: mean over the tokens, then L2 normalisation (the one
    definition for encoding and for tuning the tower, relevance.student.towers)."""
    return torch.nn.functional.normalize(pool_hidden(hidden.float(), attention_mask, "mean"), dim=-1)


def content_hash(fingerprint: str, text: str) -> str:
    return hashlib.sha1(f"{fingerprint}\x1f{text}".encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Append-only parquet parts under ``directory``: (content_hash, embedding). Safe to share between runs.

    Opening a cache reads only the parts' hash columns; vectors are read from the parts that hold them when asked
    for, and at most ``memory_rows`` recently returned vectors stay in memory. So a cache of tens of millions of
    texts costs its hashes, not its vectors (an out-of-core distillation fills its tables chunk by chunk)."""

    def __init__(self, directory: str | Path, encoder: BiEncoder, memory_rows: int = 200_000):
        import pyarrow.parquet as pq

        self.directory = Path(directory) / encoder.fingerprint
        self.directory.mkdir(parents=True, exist_ok=True)
        self.encoder = encoder
        self.memory_rows = memory_rows
        self._parts: list[tuple[Path, pd.Index]] = []
        for part in sorted(self.directory.glob("part-*.parquet")):
            hashes = pq.read_table(part, columns=["content_hash"]).column("content_hash").to_pandas()
            self._parts.append((part, pd.Index(hashes)))
        self._vectors: dict[str, np.ndarray] = {}
        self.last_misses = 0

    def __len__(self) -> int:
        return sum(len(index) for _, index in self._parts)

    def _read(self, hashes: list[str]) -> None:
        """Bring the stored vectors of ``hashes`` (those in some part) into memory."""
        import pyarrow.parquet as pq

        wanted = pd.Index(hashes)
        for part, index in self._parts:
            position = index.get_indexer(wanted)
            found = position >= 0
            if not found.any():
                continue
            column = pq.read_table(part, columns=["embedding"]).column("embedding").combine_chunks()
            matrix = column.flatten().to_numpy().reshape(len(column), -1)
            self._vectors.update(zip(wanted[found], matrix[position[found]]))
            wanted = wanted[~found]
            if wanted.empty:
                return

    def embed(self, texts: list[str] | pd.Series, description: str = "embedding") -> np.ndarray:
        """Vectors for ``texts`` in order; only texts never seen by this encoder are run through it."""
        texts = [str(t) for t in texts]
        hashes = [content_hash(self.encoder.fingerprint, t) for t in texts]
        if len(self._vectors) + len(hashes) > self.memory_rows:
            self._vectors = {}
        self._read(list({h for h in hashes if h not in self._vectors}))
        missing = {h: t for h, t in zip(hashes, texts) if h not in self._vectors}
        self.last_misses = len(missing)
        if missing:
            with progress_bar(transient=True) as bar:
                task = bar.add_task(f"{description} ({len(missing)} new)", total=len(missing))
                vectors = self.encoder.encode(list(missing.values()),
                                              on_batch=lambda n: bar.update(task, advance=n))
            part = pd.DataFrame({"content_hash": list(missing), "embedding": list(vectors)})
            tmp = self.directory / f".part-{uuid.uuid4().hex}.tmp"
            path = self.directory / f"part-{uuid.uuid4().hex}.parquet"
            part.to_parquet(tmp, index=False)
            tmp.rename(path)
            self._parts.append((path, pd.Index(list(missing))))
            self._vectors.update(zip(missing, vectors))
        if not texts:
            return np.zeros((0, self.encoder.dimension), dtype=np.float32)
        return np.stack([self._vectors[h] for h in hashes]).astype(np.float32)
