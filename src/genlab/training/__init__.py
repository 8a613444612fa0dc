"""The one training loop every family and network trains through, its optimisation, the data-parallel
workers under torchrun, what a family trains on, and resuming a killed run."""
