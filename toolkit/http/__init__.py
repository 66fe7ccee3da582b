"""The HTTP boundary: the app factory, read models as resources, the event feed,
conditional requests, problem documents, auth, health and read-your-writes tokens.
Depends on both sides; neither side imports it."""

from toolkit.http.app import create_app

__all__ = ["create_app"]
