"""One module per CLI command: parse settings, call library code, print results."""
