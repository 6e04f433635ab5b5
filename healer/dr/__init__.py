"""Disaster recovery for agents: verified checkpoints, the side-effect ledger, rollback, failover.

See docs/dr.md. The store and the ledger are standard library only (agents import them through
:mod:`healer.agent.state`); :mod:`healer.dr.actuator` is the daemon side.
"""
