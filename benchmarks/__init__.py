"""NanoMQ benchmarks: pytest-benchmark micro benchmarks (test_micro_*.py) and end-to-end
harnesses (bench_*.py, each with a ``main()`` that prints a table), all run by run_all.py."""
