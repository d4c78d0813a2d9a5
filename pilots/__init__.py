"""The `pilot` program: runs at a site inside a batch job and pulls work from the tower.

Everything under `pilots/` imports only the standard library, requests, pika
and pyyaml, so that it runs on a bare site Python.
"""
