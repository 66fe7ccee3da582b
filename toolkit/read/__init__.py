"""The read side: reading a stream from any offset (reader), translating foreign
events into the context's own language (translator), keeping read models (projection,
projector, store), rebuilding them (replay) and sharing work (work queue)."""
