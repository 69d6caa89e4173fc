"""tcnet's performance benchmarks: ``python -m benchmarks <target>`` (see ``benchmarks/__main__.py``
and ``docs/performance.md``)."""
