"""The daemon: follow the change stream, run the model graph in batches, write outputs, keep indexes."""
