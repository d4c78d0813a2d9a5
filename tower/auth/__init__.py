"""Who is who and who may do what.

- ca: the tower's certificate authority (issue, revoke, CRL)
- access: roles granted to certificate subjects, the permission check
- credentials: each pilot's own certificate
"""
