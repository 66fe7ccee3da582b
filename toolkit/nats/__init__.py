"""NATS plumbing: connections, the embedded server, streams. Knows nothing of
contexts or projections."""
