//! The thinnode image format: manifest, chunking, chunk encoding, and pack/unpack/verify/inspect.
