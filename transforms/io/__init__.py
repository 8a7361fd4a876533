"""Reading records in (files, Pub/Sub), normalizing them, and writing Parquet out."""
