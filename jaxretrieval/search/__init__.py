"""Searching a sound collection with text: index store, query engine, web server."""
