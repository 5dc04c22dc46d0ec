"""Shared configuration of esper-core's tests."""

pytest_plugins = ["pytester"]
