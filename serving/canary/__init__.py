"""Canary rollout of a student on KServe: the manifests checked offline (manifests), the kubectl patches and
registry aliases (rollout), the analysis that decides promote / hold / rollback (analysis), the round that acts on
that decision by itself, from a CronJob or locally (watch), the whole loop on one machine (local), and
`relevance canary …` (cli)."""
