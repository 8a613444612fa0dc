"""The DVC pipeline around the library: what the stage scripts share, `make show`, the offline plots
template, and the CI experiment rerun."""
