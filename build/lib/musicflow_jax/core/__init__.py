"""The foundations every other package builds on: run configs and their one loader, the flow-matching convention
(flow.py) and its ODE sampler, mesh / sharding rules, frame alignment, padding-invariant noise, audio I/O."""
