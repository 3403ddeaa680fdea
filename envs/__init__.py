"""Environments for multi-turn rollouts: pure code that answers each model turn (envs.base)."""
