"""Canary rollout of a student on KServe: the manifests checked offline (manifests), the kubectl patches and
registry aliases (rollout), the analysis that decides promote / hold / rollback (analysis), the whole loop on one
machine (local), and `relevance canary …` (cli)."""
