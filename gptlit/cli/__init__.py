"""What the entry scripts share: the builder that wires a run from its config, each script's logic, one-line
errors and the checks of the command line."""
