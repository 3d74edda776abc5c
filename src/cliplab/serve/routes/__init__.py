"""The service's routers: searches, stored items and thumbnails, encoders, and the pages."""
