"""The maths every later stage shares: chunking, tile-wise song distances, exact retrieval
metrics, distance-matrix files and fusion. Imports only core."""
