"""The three deployable services (api, refresher, reconciler), built on the shared `denorm` core."""
