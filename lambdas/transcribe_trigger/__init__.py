"""Lambda function: an audio upload starts an Amazon Transcribe job."""
