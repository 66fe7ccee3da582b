"""The example system's write sides: bounded contexts built on :mod:`toolkit`."""
