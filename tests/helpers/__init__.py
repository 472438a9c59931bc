"""Code the tests share: CLI runners, store builders, reference implementations, fixtures data."""
