"""Stage 1 (audio): the CLEWS audio-embedding model, its extraction into a store and its
song distances."""
