"""The write side: a context's aggregates and log (context, aggregate, transcoder),
what it publishes (published language, outbox) and the relay that carries it onto the
context's stream, one relay per context."""
