"""Benchmarks behind `flashsale bench`: they print figures; nothing here asserts timings."""
