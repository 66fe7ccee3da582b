"""What operators see: the reports running relays and projectors write about
themselves, and ``toolkit status``, which reads them beside streams and read models."""
