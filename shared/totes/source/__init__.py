"""The source side: the totesys OLTP model that extraction and the quality gates derive from."""
