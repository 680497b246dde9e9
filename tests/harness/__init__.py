"""Test, benchmark and load-run helpers: start a local server, read its /metrics. Never imported by app/ or model_build/."""
