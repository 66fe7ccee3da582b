"""Benchmarks: the toolkit beside what a user would pick instead, in one run."""
