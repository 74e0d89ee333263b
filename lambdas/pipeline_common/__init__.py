"""Code shared by the pipeline's Lambda functions: events, key layout, settings, error records.

Standard library and boto3 only: this package ships inside both Lambda assets.
"""
