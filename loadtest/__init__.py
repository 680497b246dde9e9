"""Locust load tests and the fp32-vs-int8 comparison report."""
