"""The download and split stages: dataset catalog, raw formats, sources and the split files."""
