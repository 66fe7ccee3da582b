"""Event logs: eventsourcing persistence modules of the toolkit's own (the log as a
JetStream stream; a PostgreSQL log for text ids)."""
