"""async_result: an asynchronous endpoint's notification becomes the upload's result."""
