"""Stage 3: trained models and text baselines ranked on a split (evaluate, distances,
baselines)."""
