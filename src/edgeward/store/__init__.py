"""The encrypted store: the SQLCipher database, its schema and its writer."""
