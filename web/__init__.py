"""The tower's web side: the Flask app factory, the REST API, status pages, authentication."""
