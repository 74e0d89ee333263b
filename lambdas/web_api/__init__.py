"""Lambda function: the web page's HTTP API (ask for an upload, read one upload, list a person's uploads)."""
