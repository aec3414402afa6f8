"""A recording's life after it is stored: retention, legal holds, deletion."""
