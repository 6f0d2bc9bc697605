"""Peer schedulers rebuilt or driven for measurement 6, each as an instance process.

:mod:`bench.peers.lock_per_tick` rebuilds the lock-per-tick pattern of the Go library
synchronized-cron-task on redis-py's ``Lock``; :mod:`bench.peers.apscheduler_instance`
runs APScheduler 4 schedulers that share a PostgreSQL data store. Both journal run
starts and ends in the format of :mod:`bench.journal`, with the same job names as the
planlagt instances, so one tally counts all three systems.
"""
