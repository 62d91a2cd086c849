"""What the entry points share: the builder that wires a run from its config, and the command-line glue."""
