"""The work moving: the loops of `tower run`, and the pilots' side of the same work.

- daemon: `tower run`, each loop a thread
- matchmaker: defined jobs to sites' queues; placement: where input data is
- factory: pilots submitted to sites while work waits
- monitor: pilots followed in their batch systems, lost work found;
  health: sites taken out for a cool-down; presence: the tower's own absence
- attempts: claims, heartbeats and reports of pilots
- stager: outputs copied home, verified, cataloged; post: the post step;
  stagein: inputs copied to a site; leftovers: files nothing names
- trial: trials ended and their proposal made
- wakeups: waking loops at once across processes
- site_check, site_status: a site as the loops see it
"""
