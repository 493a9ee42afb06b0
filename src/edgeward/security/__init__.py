"""Key handling: the master key and the keys derived from it."""
