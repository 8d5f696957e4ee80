"""Platform adapters around the core library: Feast (feature_store), Great Expectations (validation) and MLflow
(registry). Each imports its framework lazily, inside the functions that need it: the three take seconds to import."""
