"""The source side: the totesys OLTP model, its loader, generator and live simulator."""
