"""The jobs core that the API (`service`) and the worker (`worker`) share.

Settings, Redis clients, the job store and its typed records, the RQ queue, artifacts, uploads
and the upload ledger (what each key stores), the model registry and the submission policy.
Nothing here imports torch, HTTP or either of the two packages above it, so both can depend on
it without depending on each other.
"""
