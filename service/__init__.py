"""The job service: HTTP API, job records, queue and auth around the compression library."""
