"""Infrastructure every stage shares: settings, errors, terminal output, atomic files, the
feature store, dataset adapters, audio decoding, safe unpickling."""
