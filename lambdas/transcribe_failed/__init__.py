"""Lambda function: a FAILED Amazon Transcribe job becomes the upload's error record."""
