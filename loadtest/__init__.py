"""The Locust suite (locustfile.py), its gates (targets.toml, gates.py) and its runner (`denorm loadtest`)."""
