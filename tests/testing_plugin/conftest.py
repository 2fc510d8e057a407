"""The sample project is a third-party project with its own tests: test_wheel.py runs them against the built wheel."""

collect_ignore = ["sample_project"]
