"""The catalog: datasets, files with checksums and metadata, and where their replicas live."""
