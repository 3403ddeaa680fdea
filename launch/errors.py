"""Errors about the machine or cluster a run is given, kept free of Ray imports so that the
command line can catch them before Ray is loaded (see launch/network.py)."""


class ConfigError(ValueError):
    """A config value a user must change; the message names the key."""


class ResourceError(RuntimeError):
    """The cluster cannot hold the actors the config asks for."""


class NetworkError(RuntimeError):
    """The run cannot keep its promise about where it listens; the message says what to change."""


class RunStopped(RuntimeError):
    """The run was stopped by a signal after saving a checkpoint; the message says how to resume."""


class NonFiniteSteps(RuntimeError):
    """Too many consecutive steps had a NaN / inf loss or gradient norm."""


class ActorFailures(RuntimeError):
    """Actors failed more often than fault.max_actor_restarts allows, or a learner rank died."""


class LearnerLost(ActorFailures):
    """A learner rank died (the message names it). ZeRO-3 cannot replace one rank in place (its shards
    went with it): the driver restarts the run from its latest checkpoint (fault.learner_restarts)
    or stops with the command that resumes it."""


class RewardFailure(RuntimeError):
    """The reward function keeps failing; the message names it and quotes its first error."""


class RolloutsLost(RuntimeError):
    """A rollout batch a learner rank needed was gone from every object store (the node holding it
    died): the driver samples the step's prompts again and retrains it."""
