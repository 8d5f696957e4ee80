"""Feature definitions for the relevance student (Feast). Definitions only: the pipeline's features step
(relevance.feature_store) writes the parquet files these sources name and materializes them online.

Item features are computed offline for the whole catalog; the serving transformer reads them for a request's
candidates from the online store. Queries are embedded online (and cached), so the query view holds only cheap
statistics. Bump a view's `version` tag when its meaning changes: models record the versions they were trained
on (MLflow lineage), and a mismatch at serving time is an error, not a silent skew.
"""

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float32, Int64, String

# Features never expire: the catalog snapshot is the truth until the next materialization replaces it.
NO_EXPIRY = timedelta(days=365 * 10)

item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING,
              description="A catalog item (product, pin).")
query = Entity(name="query", join_keys=["query_id"], value_type=ValueType.STRING,
               description="A search query, by its stable id.")


def _source(name: str) -> FileSource:
    return FileSource(name=f"{name}_source", path=f"data/{name}.parquet", timestamp_field="event_timestamp")


item_embeddings = FeatureView(
    name="item_embeddings",
    entities=[item],
    ttl=NO_EXPIRY,
    schema=[Field(name="embedding", dtype=Array(Float32),
                  description="L2-normalised bi-encoder embedding of the item text (the student's encoder).")],
    source=_source("item_embeddings"),
    tags={"version": "1", "owner": "relevance"},
)

item_text = FeatureView(
    name="item_text",
    entities=[item],
    ttl=NO_EXPIRY,
    schema=[
        Field(name="title", dtype=String, description="Title, for title term-match features."),
        Field(name="lexical_text", dtype=String, description="Assembled item text (BM25 and term matching)."),
        Field(name="text_words", dtype=Int64, description="Words in lexical_text."),
        Field(name="title_words", dtype=Int64, description="Words in the title."),
        Field(name="locale", dtype=String),
    ],
    source=_source("item_text"),
    tags={"version": "1", "owner": "relevance"},
)

item_numeric = FeatureView(
    name="item_numeric",
    entities=[item],
    ttl=NO_EXPIRY,
    schema=[
        Field(name="impressions", dtype=Int64, description="Times the item was shown in the impression logs."),
        Field(name="judged", dtype=Int64, description="Human judgments of the item."),
    ],
    source=_source("item_numeric"),
    tags={"version": "1", "owner": "relevance"},
)

query_stats = FeatureView(
    name="query_stats",
    entities=[query],
    ttl=NO_EXPIRY,
    schema=[
        Field(name="query_words", dtype=Int64, description="Words in the query."),
        Field(name="impressions", dtype=Int64, description="Impressions logged for the query."),
        Field(name="locale", dtype=String),
    ],
    source=_source("query_stats"),
    tags={"version": "1", "owner": "relevance"},
)
