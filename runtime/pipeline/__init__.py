"""The call pipeline: audio codecs and resampling, outbound pacing (VAD, STT/LLM/TTS come later)."""
