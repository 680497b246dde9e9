"""The artifact contract shared by the build and the service: format, verification, encoding, int8 kernels, runtime.

Imports neither `app` (HTTP) nor `model_build` (training, tracing); both import it (checked by import-linter).
"""
