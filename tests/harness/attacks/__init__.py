"""The reliability run's attacks, one module per edge or fault: scripts/reliability.py runs them and checks the
bounds; tests reuse them."""
