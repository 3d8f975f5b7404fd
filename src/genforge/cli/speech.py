"""`genforge speak` and the audio side of `genforge sample`."""
