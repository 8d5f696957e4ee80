"""Feature definitions for the relevance student (Feast). Definitions only: the pipeline's features step
(relevance.platform.feature_store) writes the parquet files these sources name and materializes them online.

Item features are computed offline for the whole catalog. ``student_item_features`` (a FeatureService) names
every feature the student reads: training reads it from the offline store (get_historical_features) and the
serving transformer from the online store (get_online_features), so the two can only read the same features.
Queries are embedded online (and cached), so there is no query view. Bump a view's `version` tag when its
meaning changes: models record the versions they were trained on (MLflow lineage).
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float32, String

# Features never expire: the catalog snapshot is the truth until the next materialization replaces it.
NO_EXPIRY = timedelta(days=365 * 10)

item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING,
              description="A catalog item (product, pin).")


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
        Field(name="title", dtype=String, description="Title, for the title term-match features."),
        Field(name="lexical_text", dtype=String, description="Assembled item text (BM25 and term matching)."),
    ],
    source=_source("item_text"),
    tags={"version": "2", "owner": "relevance"},  # 2: only what the student reads
)

student_item_features = FeatureService(
    name="student_item_features",
    features=[item_embeddings, item_text],
    description="Every item feature the student reads, in training (offline) and in serving (online).",
    tags={"owner": "relevance"},
)
