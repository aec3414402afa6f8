"""Several nodes behind one address: the node registry, placement of calls, routing to owners."""
