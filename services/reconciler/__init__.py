"""The reconciler: recomputes read models from the source tables, reports and repairs drift."""
