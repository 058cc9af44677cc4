"""A stand-in for Apideck Unify + Vault that reproduces the token-refresh race.

Used by the demo, the benchmarks and the tests; see `app.create_sim_app` and `cli.run`.
"""

from proxy.sim.app import SIM_STATE, create_sim_app, start_sim
from proxy.sim.config import SimConfig
from proxy.sim.faults import FaultRule
from proxy.sim.state import SimState

__all__ = ["SIM_STATE", "FaultRule", "SimConfig", "SimState", "create_sim_app", "start_sim"]
