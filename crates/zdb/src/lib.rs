//! A 0-db compatible key-value server: RESP protocol, namespaces, and 0-db's on-disk format.
