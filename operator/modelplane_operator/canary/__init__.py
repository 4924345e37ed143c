"""The canary, pure: the variants' specs (`variants`), the analysis that compares canary with stable
(`analysis`), and the progress through steps to promotion or rollback (`progress`). Reconcile
queries Prometheus and applies what these decide; docs/canary.md tells the whole story."""
