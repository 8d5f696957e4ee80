"""The platform's real services on loopback, started from what the project's own files install: Redis (the Feast
online store of feature_store.production.yaml), an MLflow tracking server (the registry clusters run) and
Label Studio (human grading). The tests, the services benchmark and a developer's laptop start them the same
way; each module yields a running server and can stop and restart it (the fault tests). The process handling is
relevance.common.processes."""
