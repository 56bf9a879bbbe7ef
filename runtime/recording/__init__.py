"""Call recording: a recorder (an AudioSink) and where its files live."""
