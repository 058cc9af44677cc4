"""Gate tests use the shared simulator fixtures (tests/simfixtures.py)."""

from tests.simfixtures import API_KEY, APP_ID, Sim, SimFactory, gated_settings, get, headers

__all__ = ["API_KEY", "APP_ID", "Sim", "SimFactory", "gated_settings", "get", "headers"]
