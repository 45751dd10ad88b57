"""The refresher: drains the materialized-view refresh queue."""
