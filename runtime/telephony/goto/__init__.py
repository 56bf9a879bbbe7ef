"""GoTo Connect: the notification channel, call events and web-call answers."""
