"""Locust load tests that check FlexServe's latency SLAs (see the README's roadmap)."""
