"""Suite definitions (YAML) shipped with h3ops; `evaluation.suites_def.load_suite` reads them."""
