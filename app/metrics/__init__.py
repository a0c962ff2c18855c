"""Prometheus metrics: the ledger's gauges, read at scrape time by the API (``ledger``), and each
worker's counters and histograms in prometheus-client's multiprocess mode (``worker``).
README: "Monitoring" says what each one means."""
