"""The read side: reading a stream from any offset (reader), translating foreign
events into the context's own language (translator), keeping read models (projection;
the projector, which translates each batch (batches) and has the store write it, with
retries, parking and dead letters; any number of workers share one cut into slices),
rebuilding them (replay) and sharing work (work queue)."""
