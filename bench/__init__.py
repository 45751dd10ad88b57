"""Benchmarks: each runs on a generated dataset of stated size and prints what it measured."""
