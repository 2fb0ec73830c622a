"""Route files -> validated, frozen Route objects: YAML, schemas, templates, patterns."""
