"""The worker: an RQ forking worker whose work horse runs one compression job per process."""
