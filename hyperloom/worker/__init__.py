"""The worker: stores data objects, executes tasks, exchanges data with peers."""
