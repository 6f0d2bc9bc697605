"""The scheduler cases: several real scheduler processes on one backend, checked for the guarantees.

Each ``test_*.py`` module here starts instance processes (:mod:`planlagt_conformance.instance`)
on the backend under test, injects faults (SIGKILL, SIGSTOP, a graceful stop, clock skew
and, where the suite manages the server, server restarts and pauses) and checks the journal
the processes write. Run them with::

    pytest -p planlagt_conformance.plugin --pyargs planlagt_conformance.scheduler_cases --backend-url URL

Cases that restart or pause the server need the process that started the server to serve
:class:`~planlagt_conformance.scheduler_cases.server_control.ServerControlService` and to
name its socket in ``PLANLAGT_CONFORMANCE_SERVER_CONTROL``. Elsewhere they are skipped.
Backends that cannot be shared by several processes (``multi_process`` false) skip every case.
"""
