"""The callbacks service: webhook endpoints, signed delivery with retries, replay and
endpoint monitoring."""
