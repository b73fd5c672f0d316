"""Data: readers per MovieLens layout, validation, splits, the Parquet store, synthetic data, downloads. Never imports JAX."""
