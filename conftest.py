# The project's own conftest: the integration tests drive pytest-deploy as a user would, through pytester.
pytest_plugins = ["pytester"]
