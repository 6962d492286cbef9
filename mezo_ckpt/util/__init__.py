"""Process and file-system helpers shared by every layer: staged writes and locks,
threads and progress bars, the cache folder, cleaning text for terminals."""
