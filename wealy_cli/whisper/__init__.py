"""Stage 1 (lyrics): audio → Whisper transcription and decoder features → store; SBERT text
embeddings and transcription text rules."""
