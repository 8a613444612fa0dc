"""The vae family: `params` (its params section, no torch), `family` (the Family: losses, sampling,
metrics) and its networks."""
