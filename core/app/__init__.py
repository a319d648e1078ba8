"""The application: the pipeline, the commands and the CLI. The only layer that imports both mappings and connectors."""
