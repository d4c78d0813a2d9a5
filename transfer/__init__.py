"""Transfer backends behind one seam: copy a file to a storage destination and verify it."""
