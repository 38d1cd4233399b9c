"""The HTTP side of the job service: the FastAPI app, its routes, auth and the dashboard.

Everything it shares with the worker (settings, Redis, job records, queue, artifacts) lives in
`jobs`; this package adds only what a web server needs.
"""
