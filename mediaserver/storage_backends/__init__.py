"""Where recordings are stored: local disk or Google Cloud Storage, behind one Protocol."""
