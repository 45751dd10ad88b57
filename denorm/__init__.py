"""Shared core of the denorm services: settings, connections, auth, migrations and datasets."""
