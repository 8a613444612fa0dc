"""Stochastic processes that corrupt data into noise and back, separate from the networks that learn them."""
