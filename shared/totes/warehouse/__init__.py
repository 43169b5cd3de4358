"""The warehouse: its schema as numbered migrations and the set-based merge of one batch."""
