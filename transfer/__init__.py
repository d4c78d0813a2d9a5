"""Transfer backends behind one seam: copy a file to a storage destination and verify it.

- base: the `Transfer` seam, a destination's settings (`DestinationSettings`), the registry
- local, sftp: the backends; paths: paths below a root, checked
- errors: the seam's errors
"""
