"""STT, LLM and TTS engines behind one set of streaming interfaces (see base.py)."""
