"""Benchmarks of planlagt against the raw clients and against peer schedulers.

Run ``python -m bench --quick`` (about three minutes on two cores) or ``python -m bench``
(the full run, under 30 minutes) to start the servers, run every measurement, print the
tables and write a JSON file of results. ``python -m bench.report FILE.json`` turns that
file into ``docs/benchmarks.md``. Nothing here runs as part of the test suite.
"""
