"""The host: plugin discovery and registries, the config schema, composition and validation, and
the hook reference generated from the hook specs."""
