"""The experiment's params: reading params.yaml as DVC does, the shared sections, and the assembly of
`Config` from them and from the registries below (datasets, families): the one place that knows both."""
