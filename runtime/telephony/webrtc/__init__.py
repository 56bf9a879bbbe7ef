"""WebRTC: browser and aiortc callers, offer/answer, the media and the /call page."""
