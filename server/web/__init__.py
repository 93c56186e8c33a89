"""The web face on the collector's port: the HTTP read API, the dashboard and its static files."""
