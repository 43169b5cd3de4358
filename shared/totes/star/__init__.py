"""The star schema: its model (columns and types) and the pure remodelling that builds it."""
