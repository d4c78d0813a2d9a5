"""Sites: the admins' description of each batch resource, and one module per batch system."""
