"""The contract cases of planlagt's backend conformance suite.

Each ``test_*.py`` module here tests one part of the backend contract on a backend object
directly. The modules need the fixtures of :mod:`planlagt_conformance.plugin`; run them with::

    pytest -p planlagt_conformance.plugin --pyargs planlagt_conformance.cases --backend-url URL
"""
