"""Failed attempts: how an attempt ended, the policy that decides what happens
next, applying it, and the reports about failures.

- outcomes: the outcome classes of an ended attempt
- policy: retry policies (pure rules) and policies.yaml, the built-in ones
- retry: applying decisions, by the policy and by people (hold, release, retry)
- replay: `tower policy simulate`, recorded attempts through another policy
- failures: a production's failure report
"""
